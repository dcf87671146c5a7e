"""The one propagation engine behind every modified-backprop method (docs/design.md, principles 1-2).

The model is traced with ``torch.fx`` into a graph of layers. A forward pass records every layer's
inputs and output; a reverse walk then hands each layer's *signal* (relevance for LRP, a modified
gradient for Guided BP, multipliers for DeepLIFT) to the method's rule for that layer type. The
rules are plain differentiable torch operations, so ``torch.autograd.grad(loss(h), x)`` is exact.
No hooks are installed and the model is never modified.

Layers understood (anything else raises :class:`UnsupportedLayerError` naming layer and method):

* linear maps ``z = A_W(x) + b``: ``nn.Conv1d/2d/3d``, ``nn.Linear``, avg / adaptive-avg pooling
  (``A_W = w * pool``, w = 1), residual additions ``a + b`` (weights (1, 1)), and batch norm.
  A batch norm directly after a conv/linear whose output it alone consumes is folded into it
  (W' = W gamma/sigma, b' = (b - mu) gamma/sigma + beta_bn) and the pair is one layer named after
  the conv. Any other batch norm (e.g. DenseNet's pre-activation BN after a concatenation) is a
  per-channel affine layer ``z = a x + b`` (a diagonal W), to which each method applies its own
  linear rule.
* ReLU in every spelling of :mod:`geomexpl.nets.activations` (``nn.ReLU`` modules, reused or not,
  ``F.relu``, ``Tensor.relu``, ``clamp(min=0)``, ``maximum(z, 0)``, ``where(z > 0, z, 0)``,
  ``threshold(z, 0, 0)``; in-place forms too, whose later readers see the ReLU's output even
  when the call's result is discarded): under a softplus twin (``unwrap`` gives beta) the forward
  computes softplus_beta instead. Kinks (abs, LeakyReLU, other clamps) and smooth activations are
  refused with the op's name.
* elementwise affine maps by a constant (a number or a registered buffer/parameter read in
  forward): ``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c`` (operators, ``torch.add/sub/mul/div``
  and the Tensor methods), e.g. an input normalisation ``(x - mean) / std``
  (:func:`geomexpl.nets.with_normalization`). The forward is the model's own op; gradient-like
  methods (Guided BP, Deconvnet, PatternNet, DeepLIFT, ...) apply the chain rule s_x = a s_z, the
  LRP family the identity rule R_x = R_z (relevance passes the normalisation unchanged, as zennit's
  and iNNvestigate's pass rule do), and LRP's zB rule in the first weighted layer uses the input
  bounds mapped through the affine maps before it.
* max pooling (the rules route signals with the recorded argmax), shape-only layers (flatten,
  view/reshape, dropout and identity in eval mode: the signal is reshaped back), channel
  concatenation (``torch.cat``: the signal is split along the concatenated dimension), and
  fan-out (a tensor used twice receives the sum of both signals).

Layer names (``layer_names(model)``) are the ``named_modules()`` paths of module layers ('features.16';
a module called twice: its fx node name for the second call) and torch.fx node names of functional
ones ('add', 'cat_1'); the signal recorded under a name is the signal of that layer's *output*. ``propagate`` also injects an arbitrary signal at any named
layer (Sixt et al.'s cosine similarity convergence) and returns the signal of every lower layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from geomexpl.checks import check_eval, check_tensor
from geomexpl.explain.registry import inputs_trusted, offer_logits, register
from geomexpl.nets import softplus_beta, unwrap
from geomexpl.explain.graph import BATCHNORMS, Graph, Layer, UnsupportedLayerError, compile_graph
from geomexpl.explain.linear_maps import LinearMap

# --------------------------------------------------------------------------------------------
# Forward recording and the reverse walk
# --------------------------------------------------------------------------------------------
@dataclass
class Trace:
    """Values recorded by one forward pass: every layer's output, linear maps and argmax indices."""

    graph: Graph
    x: torch.Tensor  # the network input (for DeepLIFT: [x; reference])
    beta: float | None
    values: dict[str, torch.Tensor]
    maps: dict[str, LinearMap]
    argmax: dict[str, torch.Tensor]


def forward_trace(model: nn.Module, x: torch.Tensor, method: str = "propagation") -> Trace:
    """Run ``model`` (ReLU, or softplus_beta for a twin) through the graph, recording every layer."""
    net, beta = unwrap(model)
    graph = compile_graph(net)
    graph.check(method)
    check_eval(net, f"method {method!r}")
    for name, module in net.named_modules():
        if isinstance(module, BATCHNORMS) and module.running_var is None:
            raise ValueError(f"method {method!r} needs batch norms with running statistics: layer {name!r} "
                             f"({type(module).__name__}) has track_running_stats=False")
    values: dict[str, torch.Tensor] = {}
    maps: dict[str, LinearMap] = {}
    argmax: dict[str, torch.Tensor] = {}
    for layer in graph.layers:
        xs = [values[n] for n in layer.inputs]
        if layer.kind == "input":
            out = x
        elif layer.kind == "linear":
            maps[layer.name] = layer.make_map(xs)
            out = maps[layer.name].forward(xs)
        elif layer.kind == "affine":  # the model's own op, so the trace matches model(x) exactly
            maps[layer.name] = layer.make_map(xs, None if layer.constant is None else values[layer.constant])
            out = layer.run(values)
        elif layer.kind == "relu":
            out = softplus_beta(xs[0], beta)
        elif layer.kind == "maxpool":
            out, argmax[layer.name] = layer.pool(xs[0])
        else:
            out = layer.run(values)
            if layer.kind == "shape" and out.shape[0] != xs[0].shape[0]:
                raise UnsupportedLayerError(f"layer {layer.name!r} ({layer.description}) mixes the batch dimension")
        values[layer.name] = out
    return Trace(graph, x, beta, values, maps, argmax)


class Step:
    """What a rule sees of one layer: its recorded inputs ``xs`` and output ``y``, its linear map
    ``op`` (linear layers), argmax ``index`` (max pooling), the structural flags of ``layer``,
    the softplus ``beta`` (None for ReLU) and the network input ``x``."""

    def __init__(self, layer: Layer, trace: Trace):
        self.layer = layer
        self.xs = [trace.values[n] for n in layer.inputs]
        self.y = trace.values[layer.name]
        self.op = trace.maps.get(layer.name)
        self.index = trace.argmax.get(layer.name)
        self.beta = trace.beta
        self.x = trace.x
        self._chain = [trace.maps[n] for n in layer.affine_chain]

    def input_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of this (first) layer's input from the network input's bounds: mapped through
        the affine layers in between (an input normalisation), unchanged without them."""
        for op in self._chain:
            lower, upper = op.map_bounds(lower, upper)
        return lower, upper


@dataclass(frozen=True)
class Rules:
    """A method: one rule per layer type, how the walk starts and how the explanation is read off.

    ``linear(step, s) -> [signal per input]``, ``relu(step, s)``, ``maxpool(step, s)``,
    ``affine(step, s) -> [signal]`` (elementwise affine layers; default: the chain rule a s);
    ``start(logits, target) -> output signal``; ``finish(input_signal, x, reference) -> h``.
    ``reference`` (DeepLIFT) makes the forward run on [x; reference]. ``inject`` maps a user's
    [B, ...] signal to the method's internal form and ``readout`` maps it back for records.
    """

    linear: Callable
    relu: Callable
    maxpool: Callable
    start: Callable
    finish: Callable = lambda s, x, reference: s
    reference: Callable | None = None  # x -> reference batch
    inject: Callable = lambda s: s
    readout: Callable = lambda s: s
    affine: Callable = lambda step, s: step.op.transpose(s, step.op.weight)


RULE_SETS: dict[str, Callable[..., Rules]] = {}


def rule_set(name: str) -> Callable:
    """Decorator adding a builder ``(**options) -> Rules`` to :data:`RULE_SETS` under ``name``."""
    def add(builder):
        if name in RULE_SETS:
            raise ValueError(f"rule set {name!r} is registered twice")
        RULE_SETS[name] = builder
        return builder
    return add


def propagate(model: nn.Module, x: torch.Tensor, method: str, target=None, *, start: str | None = None,
              signal: torch.Tensor | None = None, record: bool = False, **options):
    """Run ``method``'s backward pass and return ``(h, records)``.

    ``start=None``: the walk starts at the logits with the method's own signal (or ``signal``,
    [B, K], when given), so ``h`` is the method's explanation of ``target`` (None: the predicted
    class). ``start=<layer name>`` (see :func:`layer_names`): ``signal`` (shaped like that layer's
    output, [B, ...]) is injected there and propagated down with the method's rules; layers not
    below it receive nothing. ``records`` (when ``record``) maps every reached layer name, the
    input included, to its signal [B, ...]: relevance (LRP family), the modified gradient (Guided
    BP, Deconv, RectGrad, PatternNet/-Attribution) or DeepLIFT multipliers.
    ``options`` go to the method's rule builder (e.g. ``bounds`` for 'lrp', ``epsilon``).
    """
    from geomexpl.explain import resolve_target  # the package imports this module

    if method not in RULE_SETS:
        raise ValueError(f"unknown propagation method {method!r}; available: {sorted(RULE_SETS)}")
    trusted = inputs_trusted()  # validated at the entry point: no check that reads a value (a host sync)
    if not trusted:
        check_tensor(x, "x", min_dim=2)
    rules = RULE_SETS[method](**options)
    batch = x.shape[0]
    user_signal = signal is not None
    with torch.enable_grad():
        reference = rules.reference(x) if rules.reference else None
        trace = forward_trace(model, x if reference is None else torch.cat([x, reference]), method)
        graph = trace.graph
        if start is None:
            logits = trace.values[graph.output][:batch]
            offer_logits(x, logits)  # the attack's output term reuses this forward pass
            if signal is None:  # resolve_target validates against the recorded logits, no new forward
                if not trusted:
                    target = resolve_target(lambda inputs: logits[: len(inputs)], x, target)
                signal = rules.start(logits, target)
            origin = graph.output
        else:
            if start not in graph.by_name or graph.by_name[start].kind == "helper":
                raise ValueError(f"start must be one of layer_names(model), got {start!r}")
            origin = start
            if signal is None:
                raise ValueError(f"propagating from layer {start!r} needs a signal")
        if user_signal:
            want = (batch,) + tuple(trace.values[origin].shape[1:])
            check_tensor(signal, "signal", min_dim=1)
            if tuple(signal.shape) != want:
                raise ValueError(f"signal at {origin!r} must have shape {want}, got {tuple(signal.shape)}")
        pending = {origin: rules.inject(signal.to(x.dtype))}
        records: dict[str, torch.Tensor] = {}
        input_signal = None
        for layer in reversed(graph.layers):
            s = pending.pop(layer.name, None)
            if s is None:
                continue
            if record:
                records[layer.name] = rules.readout(s)
            if layer.kind == "input":
                input_signal = s
                continue
            for name, part in zip(layer.inputs, _backward(layer, Step(layer, trace), s, rules)):
                pending[name] = pending[name] + part if name in pending else part
        if input_signal is None:
            input_signal = rules.inject(torch.zeros_like(x))
        h = rules.finish(input_signal, x, reference)
    return h, records


def _backward(layer: Layer, step: Step, s: torch.Tensor, rules: Rules) -> list[torch.Tensor]:
    """Signals of a layer's inputs from the signal of its output."""
    if layer.kind == "linear":
        return rules.linear(step, s)
    if layer.kind == "affine":
        return rules.affine(step, s)
    if layer.kind == "relu":
        return [rules.relu(step, s)]
    if layer.kind == "maxpool":
        return [rules.maxpool(step, s)]
    if layer.kind == "shape":
        return [s.reshape(s.shape[0], *step.xs[0].shape[1:])]
    if layer.kind == "cat":
        return list(s.split([t.shape[layer.cat_dim] for t in step.xs], dim=layer.cat_dim))
    raise AssertionError(f"layer kind {layer.kind!r} has no backward")


def route_max(s: torch.Tensor, index: torch.Tensor, in_shape) -> torch.Tensor:
    """Adjoint of max pooling at fixed argmax: each output's signal goes to its argmax input."""
    flat = s.new_zeros(s.shape[0], s.shape[1], math.prod(in_shape[2:]))
    routed = flat.scatter_add(2, index.flatten(2), s.flatten(2))
    return routed.view(s.shape[0], *in_shape[1:])


def explanation_method(name: str, uses_bounds: bool = False) -> Callable:
    """Register rule set ``name`` as an explanation method of :func:`geomexpl.explain.explain`.

    ``uses_bounds``: the method receives explain's ``bounds`` (the zB rule of the first layer).
    """
    if uses_bounds:
        def method(model, x, target, *, bounds, **options):
            return propagate(model, x, name, target, bounds=bounds, **options)[0]
    else:
        def method(model, x, target, **options):
            return propagate(model, x, name, target, **options)[0]
    method.__name__ = name
    method.__doc__ = RULE_SETS[name].__doc__
    return register(name)(method)

