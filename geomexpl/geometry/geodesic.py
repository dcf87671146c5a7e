"""Paths on the level set S = {f = c}: length, projection onto S, discrete geodesics (Theorem 1's d_g).

Paths are [T, B, ...] (T points of B examples; a [T, d] tensor is one path of vectors). Functions
evaluate f on all T * B points at once as one stacked batch [T * B, ...] (see ``derivatives.logit``
for how a [B]-target f handles that).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from geomexpl.checks import check_tensor
from geomexpl.geometry.derivatives import ScalarFunction, evaluate, gradient_norm, value_and_gradient
from geomexpl.numerics import exact_float32


def path_length(path: torch.Tensor) -> torch.Tensor:
    """sum_t |x_{t+1} - x_t|: [B] for a path [T, B, ...], a scalar for one path [T, d]."""
    check_tensor(path, "path", min_dim=2)
    return _length(path)


def _length(path: torch.Tensor) -> torch.Tensor:
    """:func:`path_length` without the check (a host read): for the geodesic's iterations."""
    steps = path.diff(dim=0)
    if path.dim() == 2:
        return steps.norm(dim=1).sum()
    return steps.flatten(2).norm(dim=2).sum(0)


def project_to_level_set(f: ScalarFunction, x: torch.Tensor, c: float | torch.Tensor, steps: int = 20,
                         tol: float | None = None) -> torch.Tensor:
    """Newton steps along the normal, x <- x - (f(x) - c) grad f / |grad f|^2, until
    |f(x) - c| <= tol * max(1, |c|) (default tol: 100 eps of x's dtype) or ``steps`` are done.

    The first step checks f and its gradient (finite, non-zero); later steps read one value per step
    from the device, the convergence test."""
    check_tensor(x, "x", min_dim=1)
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device).expand(x.shape[0])
    tol = 100 * torch.finfo(x.dtype).eps if tol is None else tol
    bound = tol * c.abs().clamp_min(1)
    x = x.detach().clone()
    shape = (-1,) + (1,) * (x.dim() - 1)
    for i in range(steps):
        value, grad = value_and_gradient(f, x) if i == 0 else _value_and_gradient(f, x)
        error = value - c
        if (error.abs() <= bound).all():
            break
        norm = gradient_norm(grad) if i == 0 else grad.flatten(1).norm(dim=1)
        x = x - (error / norm ** 2).view(shape) * grad
    return x


def _newton(f: ScalarFunction, x: torch.Tensor, c: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` Newton steps onto {f = c} without any check: no value read from the device (the
    geodesic's inner loop; a Newton step at a point already on the level set moves it by ~0)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    x = x.detach()
    for _ in range(steps):
        value, grad = _value_and_gradient(f, x)
        norm2 = grad.flatten(1).pow(2).sum(1).clamp_min(torch.finfo(x.dtype).tiny)
        x = x - ((value - c) / norm2).view(shape) * grad
    return x


def _value_and_gradient(f: ScalarFunction, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), exact_float32():
        value = f(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


@dataclass
class Geodesic:
    """length [B] along S, euclidean [B] = |x1 - x0|, level_error [B] = max_t |f - c| along the path,
    path [T, B, ...], iterations done."""

    length: torch.Tensor
    euclidean: torch.Tensor
    level_error: torch.Tensor
    path: torch.Tensor
    iterations: int


def geodesic_distance(f: ScalarFunction, x0: torch.Tensor, x1: torch.Tensor, n_points: int = 33,
                      iters: int = 500, step: float = 0.5, init: torch.Tensor | None = None,
                      project_steps: int = 3, rtol: float = 1e-7, check_every: int = 8) -> Geodesic:
    """A discrete geodesic on S = {f = f(x0)} from x0 to x1 (x1 is first projected onto S).

    String method: each iteration moves the interior points by ``step`` times the discrete curve
    Laplacian x_{i-1} + x_{i+1} - 2 x_i (curve shortening, stable for step <= 0.5), re-parametrises
    to equal arc length and projects back onto S with Newton steps; a level stops after ``iters``
    iterations or when the length changes by less than rtol (relative) in one, tested every
    ``check_every`` iterations (each test reads a value from the device; the inner projections read
    none, and the path is checked finite once at the end). Without ``init``
    ([T, B, ...]) it runs coarse to fine: 3, 5, 9, ... points up to n_points, each level started from
    the previous one (the slow long-wave part of the shortening converges on the coarse levels).
    The length is that of the polyline through points on S: shorter than the smooth curve by the
    chord error, relative O((h kappa)^2) for spacing h.
    """
    check_tensor(x0, "x0", min_dim=1)
    check_tensor(x1, "x1", min_dim=1)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if n_points < 3:
        raise ValueError(f"n_points must be >= 3, got {n_points}")
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    if not 0 < step <= 0.5:
        raise ValueError(f"step must be in (0, 0.5] for a stable curve-shortening step, got {step}")
    with torch.no_grad():
        c = evaluate(f, x0.detach())
    x1 = project_to_level_set(f, x1, c)
    if init is None:
        path = torch.stack([x0.detach(), x1])
        levels = [3]
        while levels[-1] < n_points:
            levels.append(min(2 * levels[-1] - 1, n_points))
    else:
        check_tensor(init, "init", min_dim=x0.dim() + 1)
        if init.shape[1:] != x0.shape or init.shape[0] < 3:
            raise ValueError(f"init must be [T >= 3, *x0.shape], got {tuple(init.shape)}")
        path = init.detach().clone()
        path[0], path[-1] = x0, x1
        levels = [init.shape[0]]
    done = 0
    for size in levels:
        path = _project_interior(f, _resample(path, size), c, project_steps)
        length = path_length(path)
        for i in range(iters):
            done += 1
            laplacian = path[:-2] + path[2:] - 2 * path[1:-1]
            path = torch.cat([path[:1], path[1:-1] + step * laplacian, path[-1:]])
            path = _project_interior(f, _resample(path, size), c, project_steps)
            length, previous = _length(path), length
            if (i + 1) % check_every == 0 and ((previous - length).abs() <= rtol * length).all():
                break
    check_tensor(path, "geodesic path", min_dim=2)
    with torch.no_grad():
        values = evaluate(f, path.flatten(0, 1)).view(path.shape[0], -1)
    return Geodesic(length=length, euclidean=(x1 - x0).flatten(1).norm(dim=1),
                    level_error=(values - c).abs().amax(0), path=path, iterations=done)


def level_set_path_length(f: ScalarFunction, path: torch.Tensor, c: torch.Tensor | None = None,
                          steps: int = 20, refine: int = 1) -> torch.Tensor:
    """Length [B] of a recorded path [T, B, ...] (e.g. an attack's iterates) along S = {f = c}
    (c default: f at path[0]): every point, and ``refine - 1`` evenly spaced points inserted in each
    segment, is projected onto S and the polyline through them measured. It is the length of a path
    on S up to the chord error, so an upper estimate of the geodesic distance d_g of Theorem 1."""
    check_tensor(path, "path", min_dim=3)
    if refine < 1:
        raise ValueError(f"refine must be >= 1, got {refine}")
    if c is None:
        with torch.no_grad():
            c = evaluate(f, path[0].detach())
    c = torch.as_tensor(c, dtype=path.dtype, device=path.device).expand(path.shape[1])
    t = torch.arange(refine, dtype=path.dtype, device=path.device).view(-1, *[1] * (path.dim() - 1)) / refine
    fine = ((1 - t[:, None]) * path[:-1] + t[:, None] * path[1:]).transpose(0, 1).flatten(0, 1)
    fine = torch.cat([fine, path[-1:]])
    flat = project_to_level_set(f, fine.flatten(0, 1), c.repeat(fine.shape[0]), steps=steps)
    return path_length(flat.view_as(fine))


def _project_interior(f: ScalarFunction, path: torch.Tensor, c: torch.Tensor, steps: int) -> torch.Tensor:
    inner = path[1:-1]
    flat = _newton(f, inner.flatten(0, 1), c.repeat(inner.shape[0]), steps)
    return torch.cat([path[:1], flat.view_as(inner), path[-1:]])


def _resample(path: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` points at equal arc length along each example's polyline (linear interpolation)."""
    b = path.shape[1]
    flat = path.flatten(2)                                   # [T, B, D]
    seg = flat.diff(dim=0).norm(dim=2)                       # [T-1, B]
    arc = torch.cat([torch.zeros_like(seg[:1]), seg.cumsum(0)])  # [T, B]
    target = torch.linspace(0, 1, size, dtype=path.dtype, device=path.device)[:, None] * arc[-1:]
    idx = torch.searchsorted(arc.T.contiguous(), target.T.contiguous()).T.clamp(1, path.shape[0] - 1)
    lo, hi = arc.gather(0, idx - 1), arc.gather(0, idx)
    w = ((target - lo) / (hi - lo).clamp_min(torch.finfo(path.dtype).tiny)).clamp(0, 1)[..., None]
    cols = torch.arange(b, device=path.device)
    new = (1 - w) * flat[idx - 1, cols] + w * flat[idx, cols]
    new[0], new[-1] = flat[0], flat[-1]
    return new.view(size, *path.shape[1:])
