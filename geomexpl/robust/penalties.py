"""Curvature-lowering regularisers, per example [B], differentiable in the model's parameters.

* :func:`hessian_norm_penalty`: Hutchinson's estimate of the squared Frobenius norm of the input
  Hessian of the true-class logit, ||H||_F^2 = tr(H^2) = E_v ||H v||^2 for any probe with
  E[v v^T] = I (Dombrowski et al. 2022, the Hessian-norm defence; cf. Mustafa et al.
  2020, who regularise the operator norm of the same Hessian).
* :func:`gradient_alignment_penalty`: local gradient alignment (Joo et al. 2023): the l2 and/or
  cosine distance between the input gradients at x and at a random x' in an L-inf ball around x.

Probes are Rademacher (entries +-1): both Rademacher and Gaussian probes are unbiased, but for
A = H^2 the variance of one probe is 2 (||A||_F^2 - sum_i A_ii^2) for Rademacher against
2 ||A||_F^2 for Gaussian (Hutchinson 1990; Avron & Toledo 2011), never larger; and every probe has
the same length sqrt(d), so the finite-difference step is exactly +-h in every coordinate.

Batching: the P probes of a batch of B examples are stacked probe-major into one batch of P * B
(x repeated P times; the finite differences add the B unperturbed examples), so each estimate is
one forward, one ``create_graph`` backward (and for ``method='exact'`` one more backward): no
Python loop over probes. Examples must be independent (batch norm and dropout in eval mode), which
is checked; :func:`geomexpl.robust.finetune` switches its own copy to eval mode for the penalty.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from geomexpl.checks import channel_bounds, check_eval, check_smooth, check_tensor
from geomexpl.geometry.derivatives import logit
from geomexpl.numerics import exact_float32

HESSIAN_METHODS = ("exact", "fd")
EXACT_ADVICE = ("its exact Hessian is 0 almost everywhere, so the penalty would be 0 and train nothing. Penalise its "
                "smooth twin (geomexpl.nets.softplus_twin(model, beta)) or use method='fd' (finite differences of "
                "input gradients, which see the kinks)")
ALIGNMENT_KINDS = ("l2", "cosine", "both")


def rademacher(shape, *, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Entries +-1 with probability 1/2, drawn on the generator's device, in ``like``'s dtype/device."""
    device = generator.device if generator is not None else like.device
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=device)
    return (2 * bits - 1).to(dtype=like.dtype, device=like.device)


def hessian_norm_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, probes: int = 4,
                         method: str = "exact", h: float = 1e-2,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Hutchinson estimate [B] of ||d^2 g_y / dx^2 (x)||_F^2, g_y the logit of class y (Dombrowski
    et al. 2022): the mean over ``probes`` Rademacher vectors v of ||H v||^2.

    ``method='exact'``: H v by double backward; needs a smooth net (a ReLU net's Hessian is 0 almost
    everywhere): use its softplus twin or ``method='fd'``. ``method='fd'``: the forward difference
    H v ~ (grad g(x + h v) - grad g(x)) / h (bias O(h)), which also works on ReLU nets.
    """
    check_penalty_inputs(model, x, y, "hessian_norm_penalty")
    check_hessian_options(probes, method, h)
    if method == "exact":
        check_smooth(model, x, "hessian_norm_penalty(method='exact')", EXACT_ADVICE)
    return _hessian_norm(model, x, y, probes, method, h, generator)


def _hessian_norm(model, x, y, probes, method, h, generator) -> torch.Tensor:
    g = logit(model, y)
    b = x.shape[0]
    v = rademacher((probes, *x.shape), like=x, generator=generator)
    with torch.enable_grad(), exact_float32():
        if method == "exact":
            xs = x.detach().expand(probes, *x.shape).reshape(probes * b, *x.shape[1:]).requires_grad_(True)
            (grad,) = torch.autograd.grad(g(xs).sum(), xs, create_graph=True)
            if not grad.requires_grad:  # g affine in x: H = 0
                return x.new_zeros(b)
            (hv,) = torch.autograd.grad(grad, xs, v.reshape_as(xs), create_graph=True, allow_unused=True)
            if hv is None:
                return x.new_zeros(b)
            hv = hv.view(probes, b, -1)
        else:
            shifted = x.detach()[None] + h * v  # [P, B, ...]
            xs = torch.cat([x.detach()[None], shifted]).reshape((probes + 1) * b, *x.shape[1:])
            (grad,) = torch.autograd.grad(g(xs.requires_grad_(True)).sum(), xs, create_graph=True)
            grad = grad.view(probes + 1, b, -1)
            hv = (grad[1:] - grad[:1]) / h
    return hv.pow(2).sum(-1).mean(0)


def gradient_alignment_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float = 0.05,
                               kind: str = "both", bounds=None,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """Local gradient alignment [B] (Joo et al. 2023): with x' = x + u, u uniform in the L-inf ball of
    ``radius`` (then clamped to ``bounds`` = (lower, upper) per channel, when given) and gradients
    a = grad g_y(x), b = grad g_y(x'): ||a - b||^2 (``kind='l2'``), 1 - cos(a, b) (``'cosine'``), or
    their sum (``'both'``).
    """
    check_penalty_inputs(model, x, y, "gradient_alignment_penalty")
    check_alignment_options(radius, kind)
    return _alignment(model, x, y, radius, kind, bounds, generator)


def _alignment(model, x, y, radius, kind, bounds, generator) -> torch.Tensor:
    g = logit(model, y)
    b = x.shape[0]
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    near = x.detach() + radius * (2 * u - 1)
    if bounds is not None:
        lo, hi = channel_bounds(x, *bounds)
        near = torch.maximum(torch.minimum(near, hi), lo)
    with torch.enable_grad(), exact_float32():
        xs = torch.cat([x.detach(), near]).requires_grad_(True)
        (grad,) = torch.autograd.grad(g(xs).sum(), xs, create_graph=True)
    a, c = grad.view(2, b, -1)
    out = x.new_zeros(b)
    if kind in ("l2", "both"):
        out = out + (a - c).pow(2).sum(-1)
    if kind in ("cosine", "both"):
        out = out + 1 - nn.functional.cosine_similarity(a, c, dim=-1, eps=1e-12)
    return out


def check_penalty_inputs(model, x, y, where: str) -> None:
    """x a finite floating batch [B, ...] (B >= 1), y [B] class indices, the model in eval mode."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    check_tensor(x, "x", min_dim=2)
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or y.shape[0] != x.shape[0]:
        got = f"shape {tuple(y.shape)} dtype {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{where}: y must be a [B] = [{x.shape[0]}] integer tensor of classes, got {got}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: x is an empty batch")
    check_eval(model, where)


def check_hessian_options(probes, method, h) -> None:
    if method not in HESSIAN_METHODS:
        raise ValueError(f"method must be one of {HESSIAN_METHODS}, got {method!r}")
    if not isinstance(probes, numbers.Integral) or isinstance(probes, bool) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    if not (isinstance(h, numbers.Real) and math.isfinite(h) and h > 0):
        raise ValueError(f"the finite-difference step h must be a finite number > 0, got {h!r}")


def check_alignment_options(radius, kind) -> None:
    if kind not in ALIGNMENT_KINDS:
        raise ValueError(f"kind must be one of {ALIGNMENT_KINDS}, got {kind!r}")
    if not (isinstance(radius, numbers.Real) and math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
