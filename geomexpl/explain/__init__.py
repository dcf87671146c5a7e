"""Explanation methods as exactly differentiable functions of the input (paper sec. 2.1).

``explain(model, x, method)`` returns h(x) with the shape of x. When ``x.requires_grad`` the result
keeps its graph, so ``torch.autograd.grad(loss(h), x)`` is exact (the attack's double backprop).
Options common to every method: ``beta`` (beta-smoothing: the method on the softplus_beta twin,
paper sec. 4) and ``smoothgrad`` (SmoothGrad over any method, supplement D).
"""
from __future__ import annotations

import torch
from torch import nn

from geomexpl.checks import check_eval, check_tensor
from geomexpl.explain import deeplift, gradients, patterns, rules  # noqa: F401  (register their methods)
from geomexpl.explain.patterns import Patterns, fit_patterns
from geomexpl.explain.graph import UnsupportedLayerError, layer_names
from geomexpl.explain.propagation import propagate
from geomexpl.explain.registry import METHODS, keep_graph, register, trusted_inputs
from geomexpl.nets import softplus_twin

__all__ = ["METHODS", "Patterns", "UnsupportedLayerError", "explain", "fit_patterns", "layer_names", "propagate",
           "register", "relevance_map", "resolve_target", "explain_trusted", "relevance_map_trusted"]

DEFAULT_BOUNDS = (0.0, 1.0)


def resolve_target(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Target classes as a [B] long tensor: None -> the predicted class; an int; or a [B] tensor."""
    if target is None:
        with torch.no_grad():
            return model(x.detach()).argmax(1)
    with torch.no_grad():
        num_classes = model(x[:1].detach()).shape[1]
    if isinstance(target, int) and not isinstance(target, bool):  # filled on the device: no upload
        if not 0 <= target < num_classes:
            raise ValueError(f"target classes must lie in [0, {num_classes - 1}], got {target}")
        return torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    t = torch.as_tensor(target, device=x.device).long()
    t = t.expand(x.shape[0]).clone() if t.dim() == 0 else t
    if t.shape != (x.shape[0],):
        raise ValueError(f"target must be None, an int or a [B]={x.shape[0]} tensor, got shape {tuple(t.shape)}")
    if (t < 0).any() or (t >= num_classes).any():
        raise ValueError(f"target classes must lie in [0, {num_classes - 1}], got {t.tolist()}")
    return t


def explain(model: nn.Module, x: torch.Tensor, method: str, target=None, *, beta: float | None = None,
            smoothgrad: int | None = None, noise_level: float = 0.2, bounds=DEFAULT_BOUNDS,
            generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """The explanation h(x) of ``model`` at the batch ``x`` ([B, C, H, W] or [B, D]) for ``target``.

    ``beta``: evaluate on the softplus_beta twin (beta-smoothing; modified-backprop rules then use
    sigmoid(beta z) masks). ``smoothgrad=N``: average the method over N noisy copies
    x + eps, eps ~ N(0, sigma^2), sigma = noise_level * (x_max - x_min) from ``bounds``
    (supplement D). ``bounds``: the input's value range (scalars or per-channel sequences), also
    used by LRP's zB rule. Further ``options`` go to the method (e.g. ``steps`` for IG).
    """
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; available: {sorted(METHODS)}")
    check_tensor(x, "x", min_dim=2)
    check_eval(model, f"explain({method!r})")
    if smoothgrad and (smoothgrad < 1 or noise_level < 0):
        raise ValueError(f"smoothgrad needs N >= 1 and noise_level >= 0, got {smoothgrad}, {noise_level}")
    if beta is not None:
        model = softplus_twin(model, beta)
    target = resolve_target(model, x, target)
    return _run(model, x, method, target, smoothgrad, noise_level, bounds, generator, options)


def explain_trusted(model: nn.Module, x: torch.Tensor, method: str, target: torch.Tensor, *,
                    smoothgrad: int | None = None, noise_level: float = 0.2, bounds=DEFAULT_BOUNDS,
                    generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """:func:`explain` for inputs already validated (the attack's inner loop): ``target`` is a [B]
    long tensor on x's device, ``model`` the network to explain (a twin when smoothed), and no check
    reads a tensor value, so a step makes no host sync and no probe forward pass."""
    with trusted_inputs():
        return _run(model, x, method, target, smoothgrad, noise_level, bounds, generator, options)


def _run(model, x, method, target, smoothgrad, noise_level, bounds, generator, options):
    fn = METHODS[method]
    differentiable = x.requires_grad
    xg = x if differentiable else x.detach().requires_grad_(True)
    with torch.enable_grad(), keep_graph(differentiable):  # methods differentiate internally, also under no_grad
        if smoothgrad:
            h = _smoothgrad(fn, model, xg, target, smoothgrad, noise_level, bounds, generator, options)
        else:
            h = fn(model, xg, target, **_with_bounds(fn, bounds, options))
    return h if differentiable else h.detach()


def _with_bounds(fn, bounds, options: dict) -> dict:
    """Pass ``bounds`` to methods that declare it (LRP's zB rule)."""
    if "bounds" in fn.__code__.co_varnames[: fn.__code__.co_argcount + fn.__code__.co_kwonlyargcount]:
        return {"bounds": bounds, **options}
    return options


def _smoothgrad(fn, model, x, target, n_samples, noise_level, bounds, generator, options):
    """SmoothGrad: (1/N) sum_i h(x + eps_i), all N noisy batches evaluated as one batch of N*B.

    The noise is drawn on ``generator``'s device (x's without one): pass a generator on x's device
    to avoid an upload per call."""
    lo, hi = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in bounds)
    sigma = noise_level * (hi - lo)
    if sigma.dim() == 1 and x.dim() > 2:
        sigma = sigma.view(1, -1, *([1] * (x.dim() - 2)))
    noise = torch.randn((n_samples,) + tuple(x.shape), generator=generator, dtype=x.dtype,
                        device=x.device if generator is None else generator.device)
    noisy = (x.unsqueeze(0) + sigma * noise.to(x.device)).reshape(n_samples * x.shape[0], *x.shape[1:])
    h = fn(model, noisy, target.repeat(n_samples), **_with_bounds(fn, bounds, options))
    return h.reshape(n_samples, *x.shape).mean(0)


def relevance_map(h: torch.Tensor) -> torch.Tensor:
    """Per-pixel relevance of the papers: sum of |h| over channels, normalised to sum 1 per example.

    [B, C, H, W] -> [B, H, W]; [B, D] -> [B, D].
    """
    check_tensor(h, "h", min_dim=2)
    return relevance_map_trusted(h)


def relevance_map_trusted(h: torch.Tensor) -> torch.Tensor:
    """:func:`relevance_map` without the finiteness check (a host sync): for the attack's inner loop."""
    m = h.abs().sum(1) if h.dim() == 4 else h.abs()
    total = m.flatten(1).sum(1).clamp_min(torch.finfo(m.dtype).tiny)
    return m / total.view(-1, *([1] * (m.dim() - 1)))
