"""Input validation shared by every public entry point: each failure names the argument."""
from __future__ import annotations

import torch
from torch import nn


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


_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.modules.instancenorm._InstanceNorm,
                   nn.RReLU)


def check_eval(model: nn.Module, where: str) -> None:
    """Refuse a model whose output depends on training mode (batch norm, dropout) while it trains.

    In train mode batch norm uses the batch's statistics and dropout draws fresh masks, so a result
    changes between identical calls and depends on the rest of the batch. The model is never put
    into eval mode behind the caller's back.
    """
    from geomexpl.nets import unwrap

    for name, module in unwrap(model)[0].named_modules():
        if module.training and isinstance(module, _MODE_DEPENDENT):
            if isinstance(module, nn.modules.instancenorm._InstanceNorm) and not module.track_running_stats:
                continue
            raise ValueError(f"{where} needs the model in eval mode: layer {name or '<root>'!r} "
                             f"({type(module).__name__}) is in training mode, so results would depend on the "
                             "batch and change between calls; call model.eval() first")


CURVATURE_ADVICE = ("its level sets are piecewise flat, so every curvature would be 0 (ARPACK: 'starting vector is "
                    "zero'). Measure its softplus twin: logit(geomexpl.nets.softplus_twin(model, beta), k)")


def check_smooth(model: nn.Module, x: torch.Tensor, where: str, advice: str = CURVATURE_ADVICE) -> None:
    """Refuse a ReLU (or otherwise kinked) network where second derivatives are needed, with ``advice``.

    A ReLU network is piecewise linear: its Hessian is zero almost everywhere, so every curvature
    would come out 0 (and ARPACK stops with 'error -9: starting vector is zero'). A softplus twin
    with a finite beta is smooth and passes.
    """
    from geomexpl.nets.softplus import SoftplusTwin, UnsupportedActivationError, count_relus

    check_eval(model, where)
    if isinstance(model, SoftplusTwin) and model.beta is not None:
        return
    try:
        relus = count_relus(model, x[:1].detach())
    except UnsupportedActivationError as err:
        raise ValueError(f"{where} needs a twice differentiable network: {err}; {advice}") from None
    if relus:
        raise ValueError(f"{where} needs a twice differentiable network, but this one computes {relus} ReLU(s): "
                         f"{advice}")
