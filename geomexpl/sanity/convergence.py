"""Cosine similarity convergence (CSC) of Sixt et al. (2020), sec. 3, Figure 5.

Set the relevance of layer k to random vectors v_1, ..., v_V ~ N(0, I) and propagate each down with
the method's own rules: r_l(x | r_k := v_i). If the method's chain of layer matrices C = prod_l Z_l
has converged to rank one, C v_i = c gamma^T v_i = lambda_i c for every i, so the propagated vectors
align: |s_cos(r_l(x | r_k := v_i), r_l(x | r_k := v_j))| -> 1. Per Sixt et al. the cosine runs over
the channels at every spatial location of a convolutional layer (h w values per layer) and over the
features of a dense layer. The baseline is the |cos| of two independent random vectors of the same
length d: cos^2 ~ Beta(1/2, (d - 1)/2), so its median is known exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import beta as beta_distribution
from torch import nn

from geomexpl.checks import channel_bounds, check_tensor
from geomexpl.explain import DEFAULT_BOUNDS, METHODS
from geomexpl.explain.graph import compile_graph, layer_names
from geomexpl.explain.propagation import RULE_SETS, forward_trace, propagate
from geomexpl.nets import softplus_twin, unwrap

PERCENTILES = (10, 25, 75, 90)


def one_minus_abs_cosine(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """1 - |s_cos(a, b)| along ``dim``, as min(|a^ - b^|^2, |a^ + b^|^2) / 2 of the unit vectors.

    Equal to 1 - |a.b| / (|a| |b|) but accurate down to ~eps^2 instead of eps, so convergence can be
    followed on a log scale. NaN where a or b is the zero vector (the angle is undefined).
    """
    return _unit_gap(_unit(a, dim), _unit(b, dim), dim)


def _unit(a: torch.Tensor, dim: int) -> torch.Tensor:
    """a / |a| along ``dim``; NaN for the zero vector."""
    return a / a.norm(dim=dim, keepdim=True)


def _unit_gap(ua: torch.Tensor, ub: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.minimum((ua - ub).pow(2).sum(dim), (ua + ub).pow(2).sum(dim)).div(2).clamp(max=1)


def random_baseline_median(dim: int) -> float:
    """Median |cos| of two independent N(0, I_dim) vectors: sqrt of the median of Beta(1/2, (dim-1)/2)."""
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    return 1.0 if dim == 1 else float(np.sqrt(beta_distribution.ppf(0.5, 0.5, (dim - 1) / 2)))


@dataclass(frozen=True)
class LayerConvergence:
    """The CSC at one layer: 1 - |cos| of every pair of propagated vectors, example and location."""

    layer: str
    depth: int  # layers below the injection (0: the injection layer itself)
    kind: str  # the engine's layer kind: 'linear' (conv, dense, pooling, residual add), 'relu', 'input', ...
    shape: tuple[int, ...]  # the per-example shape of the layer's signal
    gaps: np.ndarray = field(repr=False)  # 1 - |cos| over channels (features), zero vectors left out
    global_gaps: np.ndarray = field(repr=False)  # 1 - |cos| over the whole flattened layer
    undefined: int = 0  # pairs left out because a vector was zero there

    @property
    def dim(self) -> int:
        """Length of the vectors compared: channels of a [C, H, W] layer, features of a [D] layer."""
        return self.shape[0]

    @property
    def cosines(self) -> np.ndarray:
        return 1.0 - self.gaps

    @property
    def median(self) -> float:
        """Median |cos| (NaN when every vector was zero)."""
        return 1.0 - self.median_gap

    @property
    def median_gap(self) -> float:
        """1 - median |cos|, kept accurate near convergence."""
        return float(np.median(self.gaps)) if self.gaps.size else float("nan")

    @property
    def global_median(self) -> float:
        return 1.0 - float(np.median(self.global_gaps)) if self.global_gaps.size else float("nan")

    @property
    def baseline_median(self) -> float:
        """Median |cos| of random vectors of the same length (no convergence)."""
        return random_baseline_median(self.dim)

    def percentiles(self, qs=PERCENTILES) -> dict[int, float]:
        """Percentiles of |cos|."""
        if not self.gaps.size:
            return {q: float("nan") for q in qs}
        return {q: float(v) for q, v in zip(qs, np.percentile(self.cosines, qs))}

    def histogram(self, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Counts of |cos| in ``bins`` equal bins over [0, 1] and the bin edges (Fig. 5e-g)."""
        return np.histogram(self.cosines, bins=bins, range=(0.0, 1.0))

    def summary(self) -> dict:
        """One tidy row: medians, percentiles and baselines (per location and over the whole layer)."""
        return {"layer": self.layer, "depth": self.depth, "kind": self.kind, "dim": self.dim,
                "values": int(self.gaps.size), "undefined": self.undefined, "median_cos": self.median,
                "one_minus_median_cos": self.median_gap,
                **{f"p{q}_cos": v for q, v in self.percentiles().items()},
                "baseline_median_cos": self.baseline_median, "global_median_cos": self.global_median,
                "global_baseline_median_cos": random_baseline_median(int(np.prod(self.shape)))}


@dataclass(frozen=True)
class ConvergenceResult:
    """CSC of ``method`` for vectors injected at ``start``: one entry per layer, from ``start`` down
    to the input."""

    method: str
    start: str
    n_vectors: int
    layers: list[LayerConvergence]

    def __getitem__(self, layer: str) -> LayerConvergence:
        for entry in self.layers:
            if entry.layer == layer:
                return entry
        raise KeyError(f"no layer {layer!r} below {self.start!r}; layers: {[e.layer for e in self.layers]}")

    def medians(self) -> dict[str, float]:
        return {entry.layer: entry.median for entry in self.layers}

    def rows(self) -> list[dict]:
        """Tidy summary rows, one per layer."""
        return [{"method": self.method, "start": self.start, **entry.summary()} for entry in self.layers]


def pairwise_gaps(signals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1 - |cos| of all pairs of the V propagated signals [V, B, *shape].

    Returns (over the channel dimension per location: [P, B, *spatial] flattened; over the whole
    flattened signal: [P * B]), P = V (V - 1) / 2. Each vector is normalised once, then paired.
    """
    v = signals.shape[0]
    i, j = torch.triu_indices(v, v, offset=1, device=signals.device)
    local = _unit(signals.movedim(2, -1), -1)  # channels last: reduce over the fastest dimension
    flat = _unit(signals.flatten(2), -1)
    return _unit_gap(local[i], local[j], -1).flatten(), _unit_gap(flat[i], flat[j], -1).flatten()


def layer_convergence(layer: str, depth: int, kind: str, signals: torch.Tensor) -> LayerConvergence:
    """:class:`LayerConvergence` from the V propagated signals [V, B, *shape] at ``layer``."""
    gaps, global_gaps = pairwise_gaps(signals.to(torch.float64))
    defined = ~torch.isnan(gaps)
    return LayerConvergence(layer, depth, kind, tuple(signals.shape[2:]), gaps[defined].cpu().numpy(),
                            global_gaps[~torch.isnan(global_gaps)].cpu().numpy(), int((~defined).sum()))


# Methods of geomexpl.explain built from the gradient rather than a rule set of their own: the
# signal is the gradient's, and the input relevance is factor * signal (factor: x, or x - x0 for IG).
_GRADIENT_BASED = ("grad_x_input", "integrated_gradients")


def csc_methods() -> list[str]:
    """Methods the CSC can propagate: the engine's rule sets and the gradient-based methods."""
    derived = [m for m in _GRADIENT_BASED if m in METHODS and "gradient" in RULE_SETS]
    return sorted(set(RULE_SETS) | set(derived))


def _points(method: str, x: torch.Tensor, options: dict, generator) -> list[tuple[torch.Tensor, object]]:
    """The (input, input factor) pairs whose propagated signals are averaged: SmoothGrad's noisy
    copies x + eps_i (supplement D), IG's path points x0 + a_k (x - x0)."""
    smoothgrad = options.pop("smoothgrad", None)
    noise_level = options.pop("noise_level", 0.2)
    bounds = options.pop("bounds", DEFAULT_BOUNDS)
    if method in RULE_SETS and _accepts(method, "bounds"):
        options["bounds"] = bounds
    copies = [x]
    if smoothgrad:
        if smoothgrad < 1 or noise_level < 0:
            raise ValueError(f"smoothgrad needs N >= 1 and noise_level >= 0, got {smoothgrad}, {noise_level}")
        lo, hi = channel_bounds(x, *bounds)
        device = generator.device if generator is not None else x.device
        copies = [x + noise_level * (hi - lo) * torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                              device=device).to(x.device) for _ in range(smoothgrad)]
    if method in RULE_SETS:
        return [(c, None) for c in copies]
    if method == "grad_x_input":
        return [(c, c) for c in copies]
    steps = options.pop("steps", 30)
    baseline = options.pop("baseline", None)
    options.pop("batch_size", None)
    if steps < 1:
        raise ValueError(f"integrated_gradients needs steps >= 1, got {steps}")
    points = []
    for c in copies:
        x0 = torch.zeros_like(c) if baseline is None else torch.as_tensor(baseline, dtype=c.dtype, device=c.device)
        x0 = x0.expand_as(c)
        points += [(x0 + (k + 0.5) / steps * (c - x0), c - x0) for k in range(steps)]
    return points


def _accepts(method: str, option: str) -> bool:
    code = RULE_SETS[method].__code__
    return option in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def cosine_similarity_convergence(model: nn.Module, x: torch.Tensor, method: str, layer: str | None = None,
                                  n_vectors: int = 5, generator: torch.Generator | None = None,
                                  **explain_options) -> ConvergenceResult:
    """CSC of ``method`` on ``model`` at the batch ``x`` (Sixt et al. sec. 3, Fig. 5).

    Sets the signal of ``layer`` (a name of :func:`geomexpl.explain.propagation.layer_names`;
    default: the logits) to ``n_vectors`` random N(0, I) vectors per example, propagates each down
    with the method's own rules (:func:`~geomexpl.explain.propagation.propagate`) and returns, for
    every layer reached, the |cos| between all pairs of propagated vectors over the channels at each
    location (features of a dense layer). At the input the explanation h itself is compared.
    ``explain_options``: ``beta`` (the softplus twin), ``smoothgrad``/``noise_level``/``bounds`` (the
    propagated signals are averaged over the noisy copies, each receiving the same injected
    vectors), ``steps``/``baseline`` for integrated gradients (averaged over the path points) and
    the method's own options.
    """
    available = csc_methods()
    if method not in available:
        raise ValueError(f"unknown propagation method {method!r} for the CSC; available: {available}")
    check_tensor(x, "x", min_dim=2)
    if n_vectors < 2:
        raise ValueError(f"n_vectors must be at least 2 (cosines need pairs), got {n_vectors}")
    options = dict(explain_options)
    beta = options.pop("beta", None)
    if beta is not None:
        model = softplus_twin(model, beta)
    graph = compile_graph(unwrap(model)[0])
    names = layer_names(model)
    layer = graph.output if layer is None else layer
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; layer must be one of layer_names(model): {names}")
    engine_method = method if method in RULE_SETS else "gradient"
    with torch.no_grad():
        shape = tuple(forward_trace(model, x[:1], engine_method).values[layer].shape[1:])
    device = generator.device if generator is not None else x.device
    batch = x.shape[0]
    signal = torch.randn((n_vectors * batch,) + shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    points = _points(method, x, options, generator)
    sums: dict[str, torch.Tensor] = {}
    for point, factor in points:
        repeated = point.repeat(n_vectors, *([1] * (x.dim() - 1)))
        h, records = propagate(model, repeated, engine_method, start=layer, signal=signal, record=True, **options)
        records[names[0]] = h if factor is None else h * factor.repeat(n_vectors, *([1] * (x.dim() - 1)))
        for name, value in records.items():
            sums[name] = value.detach() + sums[name] if name in sums else value.detach()
    layers = [layer_convergence(name, depth, graph.by_name[name].kind,
                                (total / len(points)).reshape(n_vectors, batch, *total.shape[1:]))
              for depth, (name, total) in enumerate(sums.items())]
    return ConvergenceResult(method, layer, n_vectors, layers)
