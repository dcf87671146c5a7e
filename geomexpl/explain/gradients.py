"""Gradient-based methods: gradient, gradient x input and integrated gradients (paper sec. 2.1)."""
from __future__ import annotations

import torch

from geomexpl.explain.registry import graph_kept, input_gradient, register, target_logit


@register("gradient")
def gradient(model, x, target):
    """h(x) = grad g_k(x) (Simonyan et al.)."""
    return input_gradient(model, x, target)


@register("grad_x_input")
def grad_x_input(model, x, target):
    """h(x) = x * grad g_k(x)."""
    return x * input_gradient(model, x, target)


GRAPH_ELEMENTS = 2 ** 22  # input elements of a path whose whole graph is kept (digits b64: 2e6; 224x224: 4.5e6)
CHUNK_ELEMENTS = 2 ** 20  # input elements per checkpointed chunk when it is not (224x224: 6 points, ~3 GB)


@register("integrated_gradients")
def integrated_gradients(model, x, target, steps: int = 30, baseline=None, batch_size: int | None = None):
    """h(x) = (x - x0) * (1/m) sum_k grad g_k(x0 + a_k (x - x0)), a_k = (k + 1/2)/m (midpoint rule).

    The m points of all B examples are evaluated in chunks of at most ``batch_size`` images. The
    paper uses m = 30 steps and the zero baseline (supplement A). When h is differentiated (the
    attack) and the points need more than one chunk, each chunk's graph is rebuilt in the backward
    pass (:class:`_PathChunk`) instead of kept, so memory holds one chunk at a time; the gradient is
    exact, at the price of one more input gradient per point. ``batch_size=None``: the whole path
    at once when it has at most 2^22 input elements, else chunks of about 2^20 (6 points of one
    224x224 RGB image).
    """
    if steps < 1:
        raise ValueError(f"integrated_gradients needs steps >= 1, got {steps}")
    if batch_size is None:
        fits = steps * x.numel() <= GRAPH_ELEMENTS
        batch_size = steps * x.shape[0] if fits else max(x.shape[0], CHUNK_ELEMENTS // x[0].numel())
    x0 = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    x0 = x0.expand_as(x)
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    per_chunk = max(1, max(1, batch_size) // x.shape[0])  # path points per chunk, all examples together
    if graph_kept() and per_chunk < steps:
        total = sum(_PathChunk.apply(x, x0, a, model, target) for a in alphas.split(per_chunk))
        return (x - x0) * total / steps
    alpha_shape = (steps,) + (1,) * x.dim()
    points = (x0 + alphas.view(alpha_shape) * (x - x0)).reshape(steps * x.shape[0], *x.shape[1:])
    targets = target.repeat(steps)
    grads = []
    for pts, tgt in zip(points.split(max(1, batch_size)), targets.split(max(1, batch_size))):
        (grad,) = torch.autograd.grad(target_logit(model, pts, tgt).sum(), pts, create_graph=graph_kept())
        grads.append(grad)
    return (x - x0) * torch.cat(grads).reshape(steps, *x.shape).mean(0)


def _path_gradients(model, x, x0, alphas, target, create_graph: bool) -> torch.Tensor:
    """sum_k grad g(x0 + a_k (x - x0)) over the given alphas, [B, ...]."""
    shape = (alphas.numel(),) + (1,) * x.dim()
    points = (x0 + alphas.view(shape) * (x - x0)).reshape(alphas.numel() * x.shape[0], *x.shape[1:])
    if not create_graph:
        points = points.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(target_logit(model, points, target.repeat(alphas.numel())).sum(), points,
                                  create_graph=create_graph)
    return grad.reshape(alphas.numel(), *x.shape).sum(0)


class _PathChunk(torch.autograd.Function):
    """sum_k grad g(x0 + a_k (x - x0)) for one chunk of path points, differentiable in x without
    keeping the chunk's graph: the backward pass rebuilds it (with create_graph) and returns the
    exact vector-Jacobian product, so chunks add their gradient contributions one at a time."""

    @staticmethod
    def forward(ctx, x, x0, alphas, model, target):
        ctx.save_for_backward(x, x0, alphas)
        ctx.model, ctx.target = model, target
        with torch.enable_grad():
            return _path_gradients(model, x.detach(), x0.detach(), alphas, target, create_graph=False)

    @staticmethod
    def backward(ctx, grad_out):
        x, x0, alphas = ctx.saved_tensors
        with torch.enable_grad():
            xd, x0d = x.detach().requires_grad_(True), x0.detach().requires_grad_(x0.requires_grad)
            total = _path_gradients(ctx.model, xd, x0d, alphas, ctx.target, create_graph=True)
            wrt = [xd] + ([x0d] if x0d.requires_grad else [])
            grads = torch.autograd.grad(total, wrt, grad_out)
        return grads[0], grads[1] if len(grads) > 1 else None, None, None, None
