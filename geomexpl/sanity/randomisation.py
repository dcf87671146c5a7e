"""Sanity checks by randomisation (Adebayo et al. 2018; Sixt et al. 2020, sec. 3, Figs. 4a, 4b).

* :func:`parameter_randomisation`: re-initialise the weights from the top layer down (``cascading``)
  or one layer at a time (``independent``) and compare each map with the original one.
* :func:`random_logit`: compare the map of the explained class with the map of a random other class.

A faithful explanation must change in both checks. Maps are the channel sums of h(x), scaled to
max |m| = 1 so they lie in [-1, 1]; they are compared with max(SSIM(a, b), SSIM(a, -b)) at data
range 2 (Sixt et al. take the maximum because randomising a layer may only flip the sign) and with
the Spearman rank correlation of |m| (Adebayo et al.'s absolute rank correlation). The user's model
is never modified: randomisation works on a deep copy.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from geomexpl.checks import check_tensor
from geomexpl.explain import METHODS, explain, resolve_target
from geomexpl.metrics import spearman, ssim_abs_max

ORDERS = ("cascading", "independent")
MAP_DATA_RANGE = 2.0  # maps scaled to [-1, 1]
_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm,)


def signed_map(h: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] explanation -> [B, H, W] channel sum scaled to max |m| = 1 per example."""
    check_tensor(h, "h", min_dim=4, max_dim=4)
    m = h.sum(1)
    scale = m.abs().flatten(1).amax(1).clamp_min(torch.finfo(m.dtype).tiny)
    return m / scale.view(-1, 1, 1)


def compare_maps(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max(SSIM(a, b), SSIM(a, -b)), Spearman(|a|, |b|)) per example of [B, H, W] maps in [-1, 1]."""
    return ssim_abs_max(a, b, data_range=MAP_DATA_RANGE), spearman(a.abs(), b.abs())


def randomisation_units(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The model's layers with parameters, bottom to top, as ``(name, modules)``.

    A batch norm joins the convolution or dense layer registered just before it (it rescales that
    layer's output); any other module with parameters of its own is a unit by itself.
    """
    units: list[tuple[str, list[nn.Module]]] = []
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, _NORM_LAYERS) and units and isinstance(units[-1][1][-1], _WEIGHT_LAYERS):
            units[-1][1].append(module)
        else:
            units.append((name or "<root>", [module]))
    if not units:
        raise ValueError("model has no layers with parameters to randomise")
    return units


@torch.no_grad()
def reinitialise(modules: list[nn.Module], generator: torch.Generator | None = None) -> None:
    """Draw fresh parameters, in place: weights and biases of convolutions and dense layers from
    torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); batch norms reset to the identity
    (weight 1, bias 0, running mean 0, running variance 1); others through ``reset_parameters``."""
    for module in modules:
        if isinstance(module, _WEIGHT_LAYERS):
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            for p in (module.weight, module.bias):
                if p is not None:
                    p.copy_(_uniform(p, bound, generator))
        elif isinstance(module, _NORM_LAYERS):
            module.reset_parameters()
        elif hasattr(module, "reset_parameters"):
            with torch.random.fork_rng(devices=[]):
                if generator is not None:
                    torch.manual_seed(_seed(generator))
                module.reset_parameters()
        else:
            raise ValueError(f"cannot re-initialise {type(module).__name__}: it has no reset_parameters()")


def _seed(generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else None
    return int(torch.randint(2 ** 62, (1,), generator=generator, device=device))


def _map_fn(x: torch.Tensor, method: str, generator: torch.Generator | None, explain_options: dict):
    """``(model, target) -> signed map``, every call with the same noise (SmoothGrad), so maps
    differ only through the model or the class."""
    seed = _seed(generator)

    def run(net: nn.Module, target: torch.Tensor) -> torch.Tensor:
        noise = torch.Generator(device=x.device).manual_seed(seed)
        return signed_map(explain(net, x, method, target, generator=noise, **explain_options))
    return run


def _uniform(p: torch.Tensor, bound: float, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else p.device
    return (torch.rand(p.shape, generator=generator, dtype=p.dtype, device=device) * 2 - 1).mul_(bound).to(p.device)


@dataclass(frozen=True)
class RandomisationResult:
    """Per randomisation step (rows, top layer first) and example (columns): SSIM and Spearman
    against the original map; ``maps`` holds the original map first, then one per step."""

    method: str
    order: str
    layers: list[str]
    ssim: torch.Tensor  # [L, B]
    spearman: torch.Tensor  # [L, B]
    maps: torch.Tensor  # [L + 1, B, H, W]

    def rows(self) -> list[dict]:
        """Tidy rows: one per step and example."""
        return [{"method": self.method, "order": self.order, "step": step + 1, "layer": layer,
                 "example": b, "ssim": float(self.ssim[step, b]), "spearman": float(self.spearman[step, b])}
                for step, layer in enumerate(self.layers) for b in range(self.ssim.shape[1])]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; available: {sorted(METHODS)}")


def parameter_randomisation(model: nn.Module, x: torch.Tensor, method: str, order: str = "cascading",
                            target=None, generator: torch.Generator | None = None,
                            **explain_options) -> RandomisationResult:
    """Adebayo et al.'s model-parameter randomisation test as run by Sixt et al. (Fig. 4b).

    ``cascading``: randomise the top layer, then also the next one, ... down to the first.
    ``independent``: randomise each layer alone, all others original. Layers are those of
    :func:`randomisation_units`. The explained class stays the original model's ``target``
    (default: its prediction). ``explain_options`` go to :func:`geomexpl.explain.explain`
    (``beta``, ``smoothgrad``, method options) and stay fixed: PatternNet's ``patterns`` remain
    those of the original model, as in Sixt et al.'s runs with iNNvestigate's precomputed patterns.
    Works on a deep copy of ``model``.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    _check_method(method)
    check_tensor(x, "x", min_dim=4, max_dim=4)
    target = resolve_target(model, x, target)
    map_of = _map_fn(x, method, generator, explain_options)
    original = map_of(model, target)
    work = copy.deepcopy(model)
    units = randomisation_units(work)[::-1]
    maps, ssims, rhos = [original], [], []
    for _, modules in units:
        saved = [copy.deepcopy(m.state_dict()) for m in modules] if order == "independent" else None
        reinitialise(modules, generator)
        m = map_of(work, target)
        s, r = compare_maps(original, m)
        maps.append(m)
        ssims.append(s)
        rhos.append(r)
        if saved is not None:
            for module, state in zip(modules, saved):
                module.load_state_dict(state)
    return RandomisationResult(method, order, [name for name, _ in units], torch.stack(ssims),
                               torch.stack(rhos), torch.stack(maps))


@dataclass(frozen=True)
class RandomLogitResult:
    """Per example: the explained class, the random other class, SSIM and Spearman of their maps."""

    method: str
    target: torch.Tensor  # [B]
    other: torch.Tensor  # [B]
    ssim: torch.Tensor  # [B]
    spearman: torch.Tensor  # [B]

    def rows(self) -> list[dict]:
        return [{"method": self.method, "example": b, "target": int(self.target[b]), "other": int(self.other[b]),
                 "ssim": float(self.ssim[b]), "spearman": float(self.spearman[b])} for b in range(len(self.ssim))]


def random_logit(model: nn.Module, x: torch.Tensor, method: str, target=None,
                 generator: torch.Generator | None = None, **explain_options) -> RandomLogitResult:
    """Sixt et al.'s random-logit test (Fig. 4a): the map of ``target`` (default: the predicted
    class; pass the labels for the ground truth) against the map of a uniformly drawn other class.
    SSIM near 1 means the explanation ignores which class it explains."""
    _check_method(method)
    check_tensor(x, "x", min_dim=4, max_dim=4)
    target = resolve_target(model, x, target)
    with torch.no_grad():
        num_classes = model(x[:1].detach()).shape[1]
    if num_classes < 2:
        raise ValueError("random_logit needs a model with at least 2 classes")
    gen_device = generator.device if generator is not None else x.device
    shift = torch.randint(1, num_classes, target.shape, generator=generator, device=gen_device).to(target.device)
    other = (target + shift) % num_classes
    map_of = _map_fn(x, method, generator, explain_options)
    s, r = compare_maps(map_of(model, target), map_of(model, other))
    return RandomLogitResult(method, target, other, s, r)
