"""Input validation shared by every public entry point: each failure names the argument."""
from __future__ import annotations

import torch


def check_tensor(x, name: str, *, min_dim: int = 1, max_dim: int | None = None) -> torch.Tensor:
    """Require a finite floating tensor with ``min_dim <= x.dim() <= max_dim``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if x.dim() < min_dim or (max_dim is not None and x.dim() > max_dim):
        want = f"{min_dim}" if max_dim == min_dim else f"{min_dim}..{max_dim if max_dim else 'any'}"
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    bad = ~torch.isfinite(x)
    if bad.any():
        kind = "NaN" if torch.isnan(x).any() else "inf"
        raise ValueError(f"{name} contains {kind} values ({int(bad.sum())} of {x.numel()} entries)")
    return x


def check_in_range(x: torch.Tensor, lower, upper, name: str, atol: float = 1e-6) -> torch.Tensor:
    """Require ``lower <= x <= upper`` per channel (bounds broadcast over dim 1 of x)."""
    lo, hi = channel_bounds(x, lower, upper)
    below = (x < lo - atol).sum().item()
    above = (x > hi + atol).sum().item()
    if below or above:
        raise ValueError(
            f"{name} has values outside the declared range [{float(lo.min()):g}, {float(hi.max()):g}]: "
            f"{below} below, {above} above (min {float(x.min()):g}, max {float(x.max()):g})"
        )
    return x


def channel_bounds(x: torch.Tensor, lower, upper) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds as tensors shaped to broadcast against ``x`` ([B, C, ...]: per channel)."""
    lo = torch.as_tensor(lower, dtype=x.dtype, device=x.device)
    hi = torch.as_tensor(upper, dtype=x.dtype, device=x.device)
    if lo.dim() == 1 and x.dim() > 2:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        lo, hi = lo.reshape(shape), hi.reshape(shape)
    return lo, hi
