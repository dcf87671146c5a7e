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


@register("integrated_gradients")
def integrated_gradients(model, x, target, steps: int = 30, baseline=None, batch_size: int = 512):
    """h(x) = (x - x0) * (1/m) sum_k grad g_k(x0 + a_k (x - x0)), a_k = (k + 1/2)/m (midpoint rule).

    The m points of all B examples are evaluated in batches of at most ``batch_size`` images.
    The paper uses m = 30 steps and the zero baseline (supplement A).
    """
    if steps < 1:
        raise ValueError(f"integrated_gradients needs steps >= 1, got {steps}")
    x0 = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    x0 = x0.expand_as(x)
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    alpha_shape = (steps,) + (1,) * x.dim()
    points = (x0 + alphas.view(alpha_shape) * (x - x0)).reshape(steps * x.shape[0], *x.shape[1:])
    targets = target.repeat(steps)
    grads = []
    for pts, tgt in zip(points.split(max(1, batch_size)), targets.split(max(1, batch_size))):
        (grad,) = torch.autograd.grad(target_logit(model, pts, tgt).sum(), pts, create_graph=graph_kept())
        grads.append(grad)
    return (x - x0) * torch.cat(grads).reshape(steps, *x.shape).mean(0)
