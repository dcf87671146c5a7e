"""A bracket on sup |kappa_max| over the part of S near the data (Theorem 1, second inequality, eq. 15).

Upper end: |kappa_max| <= beta C~ / c with c <= |grad g| on the region, for C~ of eq. (10) (Frobenius
norms; chains only, max pools as selections) and the spectral graph bound (residual additions and max
pools too); each where ``curvature_constant`` accepts the model. c is the smallest |grad g| met at any
sampled point of the region (an estimate: the true minimum over the region can only be smaller).

Lower end: the largest |kappa_max| found on S within a radius r of the test images, by projected
gradient ascent started from the test images and from attack-path points. Each step takes the top
principal pair (kappa, w) by Lanczos, the gradient of the Rayleigh quotient w^T H(q) w / |grad g(q)|
with w held fixed (Hellmann-Feynman: the gradient of kappa up to the change of the tangent space),
moves along its tangent part, pulls the point back into the ball and projects it onto S. Every value
reported is a Lanczos |kappa_max| at a point on S inside the ball, so it is a certified lower end
whatever the quality of the ascent direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from geomexpl import nets
from geomexpl.geometry import curvature_constant, logit, principal_curvatures, project_to_level_set
from theory_checks.theorem1.sampling import LANCZOS_TOL, LEVEL_TOL, MAX_LANCZOS, PROJECT_STEPS

BOUND_TOL = 1e-9       # |kappa| <= beta C~ / c (1 + BOUND_TOL): float64 rounding of products of norms
NORMS = ("frobenius", "spectral")


@dataclass
class Constants:
    """C~ of the second inequality: ``frobenius`` = eq. (10) with Frobenius norms (chains only; max pools as
    selections), ``spectral`` = the graph bound with spectral norms (residual additions and max pools too);
    None where ``curvature_constant`` refuses the model, with the reason in ``note``."""

    frobenius: float | None
    spectral: float | None
    note: str = ""


def with_pools_as_selections(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module | None:
    """A copy of a Sequential whose MaxPool2d (kernel = stride, no padding) are one-tap strided depthwise
    convolutions: the linear map of a max pool off its tie set has exactly these norms (Frobenius
    sqrt(#outputs), spectral 1) for every selection pattern. None if the model is not of that form."""
    if not isinstance(model, nn.Sequential):
        return None
    param = next(model.parameters())
    x = torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device)
    layers = []
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.MaxPool2d):
                k = nn.modules.utils._pair(module.kernel_size)
                if nn.modules.utils._pair(module.stride) != k or module.padding not in (0, (0, 0)) or module.ceil_mode:
                    return None
                channels = x.shape[1]
                selection = nn.Conv2d(channels, channels, k, stride=k, groups=channels, bias=False).to(x)
                selection.weight.zero_()
                selection.weight[:, :, 0, 0] = 1.0
                module = selection.requires_grad_(False)
            x = module(x)
            layers.append(module)
    return nn.Sequential(*layers).eval()


def theorem_constant(model: nn.Module, input_shape: tuple[int, ...], smooth: bool = False) -> Constants:
    """Both C~ of the ReLU ``model``'s softplus twin (``smooth``: of ``model`` itself, a softplus network)."""
    notes = []
    net = model
    if any(isinstance(m, nn.MaxPool2d) for m in model.modules()):
        net = with_pools_as_selections(model, input_shape)
        notes.append("eq. 10 with max pools as selections (valid off their tie set)" if net is not None else
                     "eq. 10: max pools other than kernel = stride without padding")
    values = []
    for candidate, norm in ((net, "frobenius"), (model, "spectral")):
        try:
            values.append(curvature_constant(candidate if smooth else nets.softplus_twin(candidate, 1.0),
                                             input_shape, norm=norm) if candidate is not None else None)
        except ValueError as err:
            values.append(None)
            notes.append(f"no {norm} C~: curvature_constant refuses the model ({err})")
    return Constants(*values, note="; ".join(notes))


def bound_columns(kappa_max: float, beta: float, c: float, constants: Constants) -> dict:
    """beta C~ / c for both constants, whether kappa_max stays below every available one, log10 loosenesses."""
    out = {}
    for norm in NORMS:
        value = getattr(constants, norm)
        bound = beta * value / c if value is not None else math.nan
        out[f"bound_{norm}"] = bound
        out[f"log10_looseness_{norm}"] = math.log10(bound / kappa_max) if value is not None else math.nan
    available = [out[f"bound_{n}"] for n in NORMS if getattr(constants, n) is not None]
    out["holds_bound"] = all(kappa_max <= b * (1 + BOUND_TOL) for b in available) if available else None
    return out


def _rayleigh_gradient(f, q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """grad_q of w^T H(q) w / |grad g(q)| with w fixed [B, ...] (a third derivative of g)."""
    q = q.detach().requires_grad_(True)
    with torch.enable_grad():
        value = f(q)
        (grad,) = torch.autograd.grad(value.sum(), q, create_graph=True)
        (hw,) = torch.autograd.grad((grad * w).sum(), q, create_graph=True)
        quotient = (hw * w).flatten(1).sum(1) / grad.flatten(1).norm(dim=1)
        (out,) = torch.autograd.grad(quotient.sum(), q)
    return out


def _into_ball(f, q: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor, level: torch.Tensor,
               rounds: int = 3) -> torch.Tensor:
    """Alternate the pull into the ball |q - centre| <= radius and the projection onto S."""
    shape = (-1,) + (1,) * (q.dim() - 1)
    for _ in range(rounds):
        offset = q - centre
        dist = offset.flatten(1).norm(dim=1)
        q = centre + offset * (radius / dist.clamp_min(torch.finfo(dist.dtype).tiny)).clamp(max=1.0).view(shape)
        q = project_to_level_set(f, q, level, steps=PROJECT_STEPS)
    return q


@dataclass
class Ascent:
    """Best |kappa_max| [B] found from each start (Lanczos, on S, inside the ball), its point [B, ...], the
    distance to the centre [B], the |kappa| at the start [B] and the trajectory of |kappa| [steps + 1, B]."""

    kappa: torch.Tensor
    point: torch.Tensor
    distance: torch.Tensor
    start_kappa: torch.Tensor
    history: torch.Tensor


def curvature_ascent(twin: nn.Module, start: torch.Tensor, classes: torch.Tensor, level: torch.Tensor,
                     centre: torch.Tensor, radius: torch.Tensor, steps: int = 6, step: float = 0.15) -> Ascent:
    """Projected gradient ascent on |kappa_max| over S within ``radius`` [B] of ``centre`` [B, ...] from
    ``start`` [B, ...] (on S); each step has length ``step`` x radius (halved after a step that lowered
    |kappa|). See the module docstring."""
    f = logit(twin, classes)
    shape = (-1,) + (1,) * (start.dim() - 1)
    q = _into_ball(f, start.detach(), centre, radius, level)
    length = step * radius
    best_k = torch.full_like(radius, -1.0)
    best_q = q.clone()
    history, previous = [], None
    for it in range(steps + 1):
        kappa, info = principal_curvatures(f, q, k=1, which="LM", method="torch", tol=LANCZOS_TOL, maxiter=MAX_LANCZOS)
        size = kappa[:, 0].abs()
        inside = (q - centre).flatten(1).norm(dim=1) <= radius * (1 + 1e-9)
        on_s = (f(q).detach() - level).abs() <= LEVEL_TOL * level.abs().clamp_min(1.0)
        better = inside & on_s & (size > best_k)
        best_k = torch.where(better, size, best_k)
        best_q[better] = q[better]
        history.append(size)
        if it == steps:
            break
        if previous is not None:
            length = torch.where(size < previous, length / 2, length)
        previous = size
        w = info.directions[:, 0].to(q)
        g = _rayleigh_gradient(f, q, w) * torch.sign(kappa[:, 0]).to(q).view(shape)
        n = info.normal.to(q).flatten(1)
        g = g.flatten(1) - (g.flatten(1) * n).sum(1, keepdim=True) * n
        g = g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
        q = _into_ball(f, q + (length[:, None] * g).view_as(q), centre, radius, level)
    return Ascent(best_k, best_q, (best_q - centre).flatten(1).norm(dim=1), history[0], torch.stack(history))
