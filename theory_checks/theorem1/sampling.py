"""Points on the level set S = {g_k = c} and what Theorem 1 needs at each of them (paper sec. 3).

At a point p on S: the unit normal n = grad g / |grad g| (eq. 7), |grad g| (the c of eq. 15), the
largest-magnitude principal curvature |kappa_max| (batched Lanczos on the shape operator, float64)
and |g - c|. Every tensor is created on the points' device.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from geomexpl import nets
from geomexpl.geometry import logit, principal_curvatures, project_to_level_set, value_and_gradient

LANCZOS_TOL = 1e-7     # Lanczos stops when |L y - kappa y| <= tol |kappa| (relative eigenvalue error <= tol)
LEVEL_TOL = 1e-9       # a point is on S when |g - c| <= LEVEL_TOL max(1, |c|)
PROJECT_STEPS = 30     # Newton steps of the projection onto S
CHUNK = 16             # points per batched Lanczos run
MAX_LANCZOS = 300      # Lanczos steps per run (top-1 needs 20-80 on the zoo models)


def top_curvature(f, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|lambda_max| [B] of S at each x (largest-magnitude principal curvature, batched Lanczos in float64)
    and its relative residual |L y - kappa y| / |kappa| [B]."""
    kappa, info = principal_curvatures(f, x, k=1, which="LM", method="torch", tol=LANCZOS_TOL, maxiter=MAX_LANCZOS)
    size = kappa[:, 0].abs()
    return size, info.residuals[:, 0].to(size) / size.clamp_min(torch.finfo(size.dtype).tiny)


def principal_direction(f, x: torch.Tensor) -> torch.Tensor:
    """The unit principal direction [B, ...] of |kappa_max| at each x (tangent to S)."""
    _, info = principal_curvatures(f, x, k=1, which="LM", method="torch", tol=LANCZOS_TOL, maxiter=MAX_LANCZOS)
    return info.directions[:, 0].to(x)


def float64_twin(model: nn.Module, beta: float | None) -> nn.Module:
    """The softplus_beta twin of a float64 copy of ``model`` (the original is left untouched);
    ``beta=None``: the float64 copy itself (a model that is smooth already)."""
    copy64 = copy.deepcopy(model).double().eval().requires_grad_(False)
    return copy64 if beta is None else nets.softplus_twin(copy64, beta)


@dataclass
class Samples:
    """Points on S and what Theorem 1 needs at each: points [N, ...], normals [N, d], grad_norm [N],
    kappa [N] = |kappa_max|, kappa_residual [N] (relative), level_error [N] = |g - c|."""

    points: torch.Tensor
    normals: torch.Tensor
    grad_norm: torch.Tensor
    kappa: torch.Tensor
    kappa_residual: torch.Tensor
    level_error: torch.Tensor

    def take(self, order: torch.Tensor) -> "Samples":
        return Samples(*(getattr(self, name)[order] for name in Samples.__dataclass_fields__))

    @staticmethod
    def cat(parts: list["Samples"]) -> "Samples":
        return Samples(*(torch.cat([getattr(p, name) for p in parts]) for name in Samples.__dataclass_fields__))


def sample_on_level_set(twin: nn.Module, x: torch.Tensor, classes: torch.Tensor, levels: torch.Tensor,
                        curvature=top_curvature) -> Samples:
    """Project the points x [N, ...] onto S_i = {g_{k_i} = c_i} of ``twin`` and measure n, |grad g|,
    |kappa_max| (``curvature(f, x)`` -> (|kappa| [B], relative residual [B])) and |g - c| there."""
    parts = []
    classes, levels = classes.to(x.device), levels.to(x)
    for start in range(0, x.shape[0], CHUNK):
        sl = slice(start, start + CHUNK)
        f = logit(twin, classes[sl])
        p = project_to_level_set(f, x[sl], levels[sl], steps=PROJECT_STEPS)
        value, grad = value_and_gradient(f, p)
        norm = grad.flatten(1).norm(dim=1)
        kappa, residual = curvature(f, p)
        parts.append(Samples(p, grad.flatten(1) / norm[:, None], norm, kappa.to(norm), residual.to(norm),
                             (value - levels[sl]).abs()))
    return Samples.cat(parts)


@dataclass(eq=False)
class CurveOnS:
    """One curve on S from p0: its samples in order along the curve parameter ``s``. ``knots`` [K] are
    the indices (into the samples) of the curve's original points; refinement inserts samples between
    them, so segment j of the curve runs from sample knots[j] to knots[j + 1]."""

    kind: str
    label: str
    beta: float
    image: int
    cls: int
    level: float
    s: torch.Tensor
    samples: Samples
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        self.knot_s = self.s.clone()

    @property
    def knots(self) -> torch.Tensor:
        return torch.searchsorted(self.s, self.knot_s.to(self.s))

    def insert(self, s: torch.Tensor, samples: Samples) -> None:
        s = s.to(self.s)
        order = torch.argsort(torch.cat([self.s, s]))
        self.s = torch.cat([self.s, s])[order]
        self.samples = Samples.cat([self.samples, samples]).take(order)

    def on_level_set(self) -> bool:
        return float(self.samples.level_error.max()) <= LEVEL_TOL * max(1.0, abs(self.level))


def curves_from_paths(kind: str, label: str, beta: float, paths: torch.Tensor, twin: nn.Module,
                      images: list[int], classes: torch.Tensor, levels: torch.Tensor,
                      curvature=top_curvature) -> list[CurveOnS]:
    """Project every point of ``paths`` [T, B, ...] onto S and measure: one CurveOnS per example."""
    t, b = paths.shape[:2]
    flat = paths.transpose(0, 1).reshape(t * b, *paths.shape[2:])
    samples = sample_on_level_set(twin, flat, classes.repeat_interleave(t), levels.repeat_interleave(t), curvature)
    s = torch.arange(t, dtype=torch.float64, device=paths.device)
    return [CurveOnS(kind, label, beta, images[i], int(classes[i]), float(levels[i]), s.clone(),
                     samples.take(torch.arange(i * t, (i + 1) * t, device=paths.device))) for i in range(b)]


def max_pools(twin: nn.Module) -> list[nn.Module]:
    """The MaxPool modules of a twin (where it is not smooth: their selection switches)."""
    return [m for m in nets.unwrap(twin)[0].modules() if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))]


def pool_selections(twin: nn.Module, points: torch.Tensor) -> list[torch.Tensor] | None:
    """The argmax index of every max-pool output at each point [N, ...] (one [N, ...] tensor per pool
    call), or None when the model has no max pool."""
    pools = max_pools(twin)
    if not pools:
        return None
    seen: list[torch.Tensor] = []
    funcs = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}

    def hook(module, inputs, _):
        dim = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(module)]
        _, idx = funcs[dim](inputs[0], module.kernel_size, module.stride, module.padding, module.dilation,
                            module.ceil_mode, return_indices=True)
        seen.append(idx.flatten(1))

    handles = [m.register_forward_hook(hook) for m in pools]
    try:
        with torch.no_grad():
            twin(points)
    finally:
        for h in handles:
            h.remove()
    return seen

