"""Derivatives of a batch of scalar functions: value, gradient, unit normal, Hessian-vector products.

Convention: ``f`` maps a batch ``x`` of shape [B, ...] to [B] scalars, one per example, computed
independently (no batch coupling, e.g. BatchNorm in eval mode). The paper's g_k (sec. 3) is built by
:func:`logit`. The level set through p is S = {x : f(x) = f(p)}; its unit normal is
n = grad f / |grad f| (paper eq. (7)).

Two Hessian-vector products are offered:

* :class:`HessianVectorProduct` (``mode='reverse'``): a double backward. grad f is built once with
  ``create_graph=True`` and every product ``autograd.grad(grad, x, v, retain_graph=True)`` reuses
  that graph. This is the choice for the sequential products of a Lanczos iteration: on the digits
  VGG twin (CPU, one thread) one product costs 1.4-1.8 input gradients, and a single torch.func
  product is 3.3x slower.
* :func:`hvp` with ``mode='forward'``: torch.func forward-over-reverse (jvp of grad), vmapped over
  m vectors per example, so all m products run as one vectorised pass. It rebuilds the graph on each
  call and pays off only for many vectors known at once (16 vectors: 0.72x the time of 16 reused-graph
  products on the same model). Numbers from ``benchmarks/bench_geometry.py``.
"""
from __future__ import annotations

from typing import Callable

import torch

from geomexpl.checks import check_tensor

ScalarFunction = Callable[[torch.Tensor], torch.Tensor]


def logit(model: torch.nn.Module, target: int | torch.Tensor | None = None) -> ScalarFunction:
    """g_k(x) = model(x)[:, k] as [B] (paper sec. 3: the winning class output).

    ``target`` is an int, a [B] tensor of classes, or None: the predicted class at the first x the
    function is called with, then fixed. A call with N = T * B examples (a stacked path [T, B, ...]
    flattened to [T * B, ...]) uses the [B] targets tiled T times.
    """
    fixed: dict[str, torch.Tensor] = {}
    if target is not None:
        if isinstance(target, torch.Tensor):
            if target.dim() != 1 or target.is_floating_point():
                raise ValueError(f"target must be an int or a [B] integer tensor, got shape "
                                 f"{tuple(target.shape)} dtype {target.dtype}")
            fixed["k"] = target.long()
        elif isinstance(target, int):
            fixed["k"] = torch.tensor([target])
        else:
            raise TypeError(f"target must be an int, a [B] tensor or None, got {type(target).__name__}")

    def g(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        if out.dim() != 2:
            raise ValueError(f"model output must be [B, classes] logits, got shape {tuple(out.shape)}")
        if "k" not in fixed:
            fixed["k"] = out.detach().argmax(1)
        k = fixed["k"].to(out.device)
        n = out.shape[0]
        if k.numel() != 1 and n % k.numel():
            raise ValueError(f"f got a batch of {n} examples but has {k.numel()} targets; the batch must "
                             "be a multiple of the number of targets (a stacked path [T, B, ...])")
        k = k.expand(n) if k.numel() == 1 else k.repeat(n // k.numel())
        if "checked" not in fixed and (int(k.max()) >= out.shape[1] or int(k.min()) < 0):  # once: no sync per call
            raise ValueError(f"logit index {k.unique().tolist()} out of range: the model has {out.shape[1]} outputs "
                             f"(classes 0..{out.shape[1] - 1})")
        fixed["checked"] = True
        return out.gather(1, k[:, None]).squeeze(1)

    g.model = model  # lets principal_curvatures refuse a ReLU network (check_smooth)
    return g


def evaluate(f: ScalarFunction, x: torch.Tensor) -> torch.Tensor:
    """f(x) checked to be a finite [B] tensor."""
    value = f(x)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"f must return a torch.Tensor, got {type(value).__name__}")
    if value.shape != (x.shape[0],):
        raise ValueError(f"f must map a batch [B, ...] to [B] scalars; for x of shape {tuple(x.shape)} "
                         f"it returned shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"f(x) is not finite (NaN/inf) at examples {_indices(~torch.isfinite(value))}")
    return value


def value_and_gradient(f: ScalarFunction, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x) [B], grad f(x) [B, ...]), both detached."""
    check_tensor(x, "x", min_dim=1)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = evaluate(f, x)
        if not value.requires_grad:
            raise ValueError("f(x) does not depend on x (its output carries no gradient)")
        (grad,) = torch.autograd.grad(value.sum(), x)
    _check_finite(grad, "grad f(x)")
    return value.detach(), grad


def gradient(f: ScalarFunction, x: torch.Tensor) -> torch.Tensor:
    """grad f(x), shape [B, ...] like x."""
    return value_and_gradient(f, x)[1]


def unit_normal(f: ScalarFunction, x: torch.Tensor) -> torch.Tensor:
    """n = grad f / |grad f| (paper eq. (7)); raises where grad f = 0 (no normal defined)."""
    grad = gradient(f, x)
    return grad / gradient_norm(grad).view(-1, *[1] * (x.dim() - 1))


def gradient_norm(grad: torch.Tensor) -> torch.Tensor:
    """|grad f| per example [B]; raises where it is 0, since the level set then has no normal."""
    norm = grad.flatten(1).norm(dim=1)
    if (norm == 0).any():
        raise ValueError(f"grad f = 0 at examples {_indices(norm == 0)}: the level set has no unit "
                         "normal there (a critical point of f)")
    return norm


class HessianVectorProduct:
    """v -> H v per example, H the Hessian of f at x; grad f is built once and its graph reused.

    Attributes: ``x`` (detached), ``value`` f(x) [B], ``gradient`` grad f(x) [B, ...], ``count`` the
    number of products taken. ``v`` has x's shape; it is cast to x's dtype and device.
    """

    def __init__(self, f: ScalarFunction, x: torch.Tensor):
        check_tensor(x, "x", min_dim=1)
        self.x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            value = evaluate(f, self.x)
            if not value.requires_grad:
                raise ValueError("f(x) does not depend on x (its output carries no gradient)")
            (self._grad,) = torch.autograd.grad(value.sum(), self.x, create_graph=True)
        self.value = value.detach()
        self.gradient = self._grad.detach()
        _check_finite(self.gradient, "grad f(x)")
        self.count = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != self.x.shape:
            raise ValueError(f"v must have the shape of x {tuple(self.x.shape)}, got {tuple(v.shape)}")
        self.count += 1
        v = v.to(dtype=self.x.dtype, device=self.x.device)
        if not self._grad.requires_grad:  # f affine in x: H = 0
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(self._grad, self.x, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv


def hvp(f: ScalarFunction, x: torch.Tensor, v: torch.Tensor, mode: str = "reverse") -> torch.Tensor:
    """H v per example for v [B, ...] (one vector each) or [B, m, ...] (m vectors each).

    ``mode='reverse'``: double backward, first-order graph built once and reused for the m vectors.
    ``mode='forward'``: torch.func jvp over grad, vmapped over the m vectors (one vectorised pass;
    needs a torch.func-compatible f).
    """
    check_tensor(x, "x", min_dim=1)
    check_tensor(v, "v", min_dim=1)
    many = v.dim() == x.dim() + 1
    if v.shape[:1] + v.shape[1 + many:] != x.shape:
        raise ValueError(f"v must be [B, ...] or [B, m, ...] with x of shape {tuple(x.shape)}, "
                         f"got {tuple(v.shape)}")
    vs = v.to(dtype=x.dtype, device=x.device)
    vs = vs if many else vs[:, None]
    if mode == "reverse":
        product = HessianVectorProduct(f, x)
        out = torch.stack([product(vs[:, j]) for j in range(vs.shape[1])], dim=1)
    elif mode == "forward":
        with torch.no_grad():
            evaluate(f, x)
        grad_of_sum = torch.func.grad(lambda z: f(z).sum())
        x0 = x.detach()
        out = torch.func.vmap(lambda u: torch.func.jvp(grad_of_sum, (x0,), (u,))[1],
                              in_dims=1, out_dims=1)(vs)
    else:
        raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
    return out if many else out[:, 0]


def hessian(f: ScalarFunction, x: torch.Tensor, max_dim: int = 4096) -> torch.Tensor:
    """Dense Hessian [B, d, d] from d graph-reusing HVPs with the basis vectors (test oracle only)."""
    check_tensor(x, "x", min_dim=1)
    d = x[0].numel()
    if d > max_dim:
        raise ValueError(f"a dense Hessian of input dimension d={d} exceeds max_dim={max_dim} "
                         f"({d}x{d} entries per example); use the matrix-free HVP / Lanczos path")
    product = HessianVectorProduct(f, x)
    basis = torch.zeros_like(product.x).flatten(1)
    columns = []
    for j in range(d):
        basis.zero_()
        basis[:, j] = 1
        columns.append(product(basis.view_as(x)).flatten(1))
    h = torch.stack(columns, dim=2)
    return (h + h.transpose(1, 2)) / 2


def _check_finite(t: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(t.flatten(1)).all(dim=1)
    if bad.any():
        raise ValueError(f"{name} is not finite (NaN/inf) at examples {_indices(bad)}")


def _indices(mask: torch.Tensor, limit: int = 10) -> list[int]:
    return mask.nonzero().flatten()[:limit].tolist()
