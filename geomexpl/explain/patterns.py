"""PatternNet and PatternAttribution (Kindermans et al. 2018) with the two-component estimator.

For every conv/linear layer (batch norm folded) with output y = w^T x + b per unit, the signal
direction is estimated separately where the unit is active and inactive (Sixt eq. 9, appendix C):

    a+ = (E+[x y] - E+[x] E+[y]) / (w^T E+[x y] - w^T E+[x] E+[y]),  E+ over samples with y > 0,

and a- likewise over y < 0; for a conv the samples are all (image, position) pairs. The backward
pass replaces W^T by A^T (PatternNet, Sixt eq. 10) or (W * A)^T (PatternAttribution, eq. 11);
ReLUs apply the gradient mask (sigmoid(beta z) under a twin), everything else is the gradient.
A unit uses a+ where its y > 0 and a- elsewhere; for a layer whose every consumer is a ReLU only
a+ is used (the ReLU gates the other regime off, and one pattern keeps the rule smooth under
softplus). ``fit_patterns`` caches its result under ``geomexpl.nets.cache_dir()/patterns``,
keyed by a hash of the model's structure and state_dict and of the data.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from geomexpl.checks import check_tensor
from geomexpl.explain.graph import compile_graph
from geomexpl.explain.linear_maps import ConvMap, DenseMap
from geomexpl.explain.propagation import Rules, Step, explanation_method, forward_trace, rule_set
from geomexpl.explain.rules import max_route, one_hot, relu_gradient
from geomexpl.nets import cache_dir, unwrap

FORMAT = 2  # 2: layers named by their named_modules() path


@dataclass(frozen=True)
class Patterns:
    """Signal patterns a+ (``positive``) and a- (``negative``) per layer name, shaped like the weights."""

    positive: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor]
    key: str = ""

    def pair(self, layer: str, weight: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(a+, a-) of ``layer`` on ``weight``'s device and dtype; a clear error if they do not fit."""
        if layer not in self.positive:
            raise ValueError(f"{method}: the patterns have no entry for layer {layer!r}; they were fitted for "
                             "another model (call fit_patterns(model, data) for this one)")
        pos, neg = self.positive[layer], self.negative[layer]
        if pos.shape != weight.shape:
            raise ValueError(f"{method}: the pattern of layer {layer!r} has shape {tuple(pos.shape)} but its "
                             f"weight has {tuple(weight.shape)}; fit the patterns for this model")
        return pos.to(weight), neg.to(weight)

    def to(self, like: torch.Tensor) -> "Patterns":
        """The patterns on ``like``'s device and dtype (moved once, before a loop that uses them)."""
        return Patterns({k: v.to(like) for k, v in self.positive.items()},
                        {k: v.to(like) for k, v in self.negative.items()}, self.key)


def _fingerprint(net: nn.Module, data: torch.Tensor) -> str:
    """sha256 of the graph structure, every state_dict tensor and the data."""
    digest = hashlib.sha256(f"patterns-v{FORMAT}".encode())
    for layer in compile_graph(net).layers:
        digest.update(f"{layer.name}|{layer.kind}|{layer.description}|{layer.inputs}".encode())
    tensors = [(name, t) for name, t in sorted(net.state_dict().items())] + [("__data__", data)]
    for name, tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _weight_sum(op, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum over samples (and positions) of x_patch g_j, shaped like the weight: the weight gradient
    of <A_W(x), g>, which is exact for any conv stride/padding/groups and for dense layers."""
    w = torch.zeros_like(op.weight, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(op.apply([x], w), w, g)
    return grad


def _estimate(stats: dict, weight: torch.Tensor) -> torch.Tensor:
    """a = cov[x, y] / (w^T cov[x, y]) from the sums of one regime (0 where the regime is empty)."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    n = stats["n"].clamp_min(1).view(shape)
    cov = stats["xy"] / n - (stats["x"] / n) * (stats["y"].view(shape) / n)
    var_y = (weight.double() * cov).flatten(1).sum(1).view(shape)
    usable = (stats["n"].view(shape) > 0) & (var_y.abs() > 0)
    return torch.where(usable, cov / torch.where(usable, var_y, torch.ones_like(var_y)),
                       torch.zeros_like(cov)).to(weight.dtype)


PATTERN_METHODS = ("pattern_net", "pattern_attribution")  # methods that need fitted patterns


def fit_patterns(model: nn.Module, data: torch.Tensor, batch_size: int = 256, cache: bool = True) -> Patterns:
    """Fit the two-component patterns of every conv/linear layer of ``model`` on ``data`` [N, ...].

    Runs the ReLU model (a twin is unwrapped). With ``cache``, a previous result for the same model
    weights and data is loaded from ``cache_dir()/patterns/<hash>.pt`` and a new one is saved there.
    """
    net, _ = unwrap(model)
    check_tensor(data, "data", min_dim=2)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    key = _fingerprint(net, data)
    path = cache_dir() / "patterns" / f"{key}.pt"
    if cache and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("format") == FORMAT and blob.get("key") == key:
                return Patterns(blob["positive"], blob["negative"], key)
        except Exception as err:  # a corrupt cache file is refitted, never used
            print(f"geomexpl: ignoring unreadable pattern cache {path}: {err}", file=sys.stderr)
    sums: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    weights: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for batch in data.split(batch_size):
            trace = forward_trace(net, batch, "fit_patterns")
            for name, op in trace.maps.items():
                if not isinstance(op, (ConvMap, DenseMap)):
                    continue
                layer = trace.graph.by_name[name]
                x = trace.values[layer.inputs[0]].double()
                y = trace.values[name].double()
                weights[name] = op.weight
                for regime, mask in (("positive", y > 0), ("negative", y < 0)):
                    m = mask.double()
                    acc = sums.setdefault(name, {}).setdefault(regime, {})
                    reduce = [d for d in range(y.dim()) if d != 1]
                    for key_, value in (("n", m.sum(reduce)), ("y", (y * m).sum(reduce)),
                                        ("x", _weight_sum(op, x, m)), ("xy", _weight_sum(op, x, y * m))):
                        acc[key_] = acc[key_] + value if key_ in acc else value
    patterns = Patterns({n: _estimate(s["positive"], weights[n]) for n, s in sums.items()},
                        {n: _estimate(s["negative"], weights[n]) for n, s in sums.items()}, key)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"format": FORMAT, "key": key, "positive": {k: v.cpu() for k, v in patterns.positive.items()},
                    "negative": {k: v.cpu() for k, v in patterns.negative.items()}}, tmp)
        os.replace(tmp, path)
    return patterns


def _pattern_linear(patterns: Patterns, attribution: bool, method: str):
    """s_in = A^T s (PatternNet) or (W * A)^T s (PatternAttribution) for conv/linear layers."""
    def rule(step: Step, s: torch.Tensor) -> list[torch.Tensor]:
        op = step.op
        if not isinstance(op, (ConvMap, DenseMap)):
            return op.transpose(s, op.weight)
        pos, neg = patterns.pair(step.layer.name, op.weight, method)
        if attribution:
            pos, neg = op.weight * pos, op.weight * neg
        if step.layer.gated:
            return op.transpose(s, pos)
        up = (step.y > 0).to(s.dtype)
        return [a + b for a, b in zip(op.transpose(s * up, pos), op.transpose(s * (1 - up), neg))]
    return rule


def _pattern_rules(patterns, attribution: bool, method: str) -> Rules:
    if patterns is None:
        raise ValueError(f"{method} needs patterns: pass patterns=geomexpl.explain.fit_patterns(model, data)")
    if not isinstance(patterns, Patterns):
        raise TypeError(f"{method}: patterns must come from fit_patterns, got {type(patterns).__name__}")
    return Rules(linear=_pattern_linear(patterns, attribution, method), relu=relu_gradient, maxpool=max_route,
                 start=one_hot)


@rule_set("pattern_net")
def pattern_net(patterns: Patterns | None = None) -> Rules:
    """PatternNet: r_l = A_l^T r_{l+1} with the ReLU gradient mask (Sixt eq. 10)."""
    return _pattern_rules(patterns, False, "pattern_net")


@rule_set("pattern_attribution")
def pattern_attribution(patterns: Patterns | None = None) -> Rules:
    """PatternAttribution: r_l = (W_l * A_l)^T r_{l+1} with the ReLU gradient mask (Sixt eq. 11)."""
    return _pattern_rules(patterns, True, "pattern_attribution")


explanation_method("pattern_net")
explanation_method("pattern_attribution")
