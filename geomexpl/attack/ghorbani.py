"""The baseline of Ghorbani et al. (2017), as in supplement A.2 eq. (2).

Iterated signed-gradient steps x <- clamp(x + eps * sign(grad D(x))) on the dissimilarity
D(x) = sum_{i in A} I_i(x): the relevance accumulated in a region A. A step is kept only while the
predicted class stays the same ("keep only the class"); an example whose class would change stops.
It raises the relevance in A but cannot reproduce a structured target, which is the paper's point.
"""
from __future__ import annotations

import torch
from torch import nn

from geomexpl.checks import channel_bounds, check_in_range, check_tensor
from geomexpl.explain import METHODS, explain_trusted, relevance_map_trusted, resolve_target
from geomexpl.nets import softplus_twin


def ghorbani_attack(model: nn.Module, x: torch.Tensor, region: torch.Tensor, method: str = "gradient", *,
                    target=None, steps: int = 100, step_size: float = 1e-3, beta: float | None = 30.0,
                    bounds=(0.0, 1.0), **method_options) -> torch.Tensor:
    """x_adv after ``steps`` signed steps that raise the relevance inside ``region`` [B, H, W] (0/1).

    ``beta``: the softplus surrogate whose gradient drives the steps (the class check and the
    returned image use the ReLU model).
    """
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; available: {sorted(METHODS)}")
    check_tensor(x, "x", min_dim=2)
    check_in_range(x, *bounds, name="x")
    region = region.to(x)
    map_shape = (x.shape[0],) + tuple(x.shape[2:] if x.dim() == 4 else x.shape[1:])
    if tuple(region.shape) != map_shape:
        raise ValueError(f"region must have shape {map_shape}, got {tuple(region.shape)}")
    target = resolve_target(model, x, target)
    lo, hi = channel_bounds(x, *bounds)
    if not bool((lo < hi).all()):
        raise ValueError(f"bounds need lower < upper, got {bounds!r}")
    surrogate = model if beta is None else softplus_twin(model, beta)  # None: the model as given
    x_adv = x.detach().clone()
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        xg = x_adv.clone().requires_grad_(True)
        h = explain_trusted(surrogate, xg, method, target, bounds=(lo, hi), **method_options)
        inside = (relevance_map_trusted(h) * region).flatten(1).sum(1)
        (grad,) = torch.autograd.grad(inside.sum(), xg)
        with torch.no_grad():
            proposal = torch.maximum(torch.minimum(x_adv + step_size * grad.sign(), hi), lo)
            active &= model(proposal).argmax(1) == target
            x_adv = torch.where(active.view(-1, *([1] * (x.dim() - 1))), proposal, x_adv)
        if not active.any():  # the one host read of a step: stop once every example's class would change
            break
    return x_adv
