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

import functools
import math
import operator
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from geomexpl.checks import check_eval, check_tensor
from geomexpl.explain.registry import inputs_trusted, offer_logits, register
from geomexpl.nets import softplus_beta, unwrap
from geomexpl.explain.fx_activations import node_activation

__all__ = ["RULE_SETS", "Rules", "Step", "UnsupportedLayerError", "explanation_method", "forward_trace",
           "layer_names", "propagate", "route_max", "rule_set"]


class UnsupportedLayerError(TypeError):
    """The model contains a layer that a propagation method has no rule for."""


# --------------------------------------------------------------------------------------------
# Linear maps: z = A_W(x_1..x_n) + b. Rules evaluate A with modified weights (W+, W-, W^2, a
# pattern) and apply the exact transpose A^T, both differentiable in x, the signal and W.
# --------------------------------------------------------------------------------------------
class LinearMap:
    """A layer linear in its inputs; ``weight`` is the W whose signs and patterns rules use."""

    dense = False  # nn.Linear (LRP-CMP's epsilon layers)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, inputs: list[torch.Tensor]):
        self.weight, self.bias = weight, bias
        self.in_shapes = [tuple(t.shape[1:]) for t in inputs]

    def apply(self, xs: list[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        """A_weight(xs), without bias."""
        raise NotImplementedError

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        z = self.apply(xs, self.weight)
        return z if self.bias is None else z + self._bias_view(z)

    def _bias_view(self, z):
        return self.bias.view(-1, *([1] * (z.dim() - 2)))

    def transpose(self, s: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
        """A_weight^T s for each input: the gradient of <A_weight(u), s> in u, with the graph kept."""
        dummies = [s.new_zeros((s.shape[0],) + shape, requires_grad=True) for shape in self.in_shapes]
        return list(torch.autograd.grad(self.apply(dummies, weight), dummies, s, create_graph=True))


class ConvMap(LinearMap):
    def __init__(self, module: nn.Module, weight, bias, inputs):
        super().__init__(weight, bias, inputs)
        self.module = module
        self.dims = module.weight.dim() - 2
        self.closed_form = module.padding_mode == "zeros" and not isinstance(module.padding, str)

    def apply(self, xs, weight):
        return self.module._conv_forward(xs[0], weight, None)

    def transpose(self, s, weight):
        if not self.closed_form:
            return super().transpose(s, weight)
        m = self.module
        in_size = self.in_shapes[0][1:]
        out_pad = [i - ((o - 1) * st - 2 * p + d * (k - 1) + 1) for i, o, st, p, d, k in
                   zip(in_size, s.shape[2:], m.stride, m.padding, m.dilation, weight.shape[2:])]
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.dims - 1]
        return [conv_t(s, weight, None, m.stride, m.padding, out_pad, m.groups, m.dilation)]


class DenseMap(LinearMap):
    dense = True

    def apply(self, xs, weight):
        return F.linear(xs[0], weight)

    def _bias_view(self, z):
        return self.bias

    def transpose(self, s, weight):
        return [s @ weight]


class DiagonalMap(LinearMap):
    """A batch norm that follows no conv/linear: z = a x + b per channel (dim 1)."""

    def apply(self, xs, weight):
        return xs[0] * weight.view(-1, *([1] * (xs[0].dim() - 2)))

    def transpose(self, s, weight):
        return [s * weight.view(-1, *([1] * (s.dim() - 2)))]


class SumMap(LinearMap):
    """A residual addition z = w_1 a + w_2 b (w = (1, alpha) for torch.add)."""

    def apply(self, xs, weight):
        return weight[0] * xs[0] + weight[1] * xs[1]

    def transpose(self, s, weight):
        return [weight[0] * s, weight[1] * s]


class PoolMap(LinearMap):
    """Average / adaptive-average pooling as z = w * pool(x) with w = 1."""

    def __init__(self, pool: Callable, weight, inputs):
        super().__init__(weight, None, inputs)
        self.pool = pool

    def apply(self, xs, weight):
        return weight * self.pool(xs[0])


class AffineMap(LinearMap):
    """An elementwise z = a x + b with constant (broadcast) a and b; the transpose sums a s back to
    the input's shape."""

    def apply(self, xs, weight):
        return xs[0] * weight

    def _bias_view(self, z):
        return self.bias

    def transpose(self, s, weight):
        return [(s * weight).sum_to_size((s.shape[0],) + self.in_shapes[0])]

    def map_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bounds of z for lower <= x <= upper (swapped where a < 0)."""
        first, second = self.forward([lower]), self.forward([upper])
        return torch.minimum(first, second), torch.maximum(first, second)


def _fold_batchnorm(weight, bias, bn: nn.Module):
    """Fold an eval-mode batch norm into the preceding layer: returns (W', b')."""
    scale, shift = _batchnorm_affine(bn)
    folded_w = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    folded_b = shift if bias is None else bias * scale + shift
    return folded_w, folded_b


def _batchnorm_affine(bn: nn.Module):
    """BN(x) = scale * x + shift with the running statistics."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


# --------------------------------------------------------------------------------------------
# The traced graph
# --------------------------------------------------------------------------------------------
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d)
_SHAPE_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                  nn.AlphaDropout)
_ADD_FUNCTIONS = {operator.add, torch.add}
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_MAXPOOL_FUNCTIONS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3}
_AVGPOOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                      F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}
_SHAPE_FUNCTIONS = {torch.flatten, F.dropout}
_SHAPE_METHODS = {"flatten", "view", "reshape", "contiguous"}
_HELPER_FUNCTIONS = {getattr, operator.getitem, operator.mul, operator.floordiv, operator.sub,
                     operator.add}
_HELPER_METHODS = {"size", "dim"}
_AFFINE_FUNCTIONS = {operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
                     operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div"}
_AFFINE_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}
_MAXPOOL_WITH_INDICES = {1: F.max_pool1d_with_indices, 2: F.max_pool2d_with_indices,
                         3: F.max_pool3d_with_indices}


@dataclass
class Layer:
    """One node of the propagation graph.

    ``kind``: 'input', 'linear', 'affine' (elementwise by a constant), 'relu', 'maxpool', 'shape',
    'cat', 'helper' (non-tensor values such as ``x.size(0)`` or a buffer) or 'unsupported'. ``inputs``: names of the tensor inputs. ``first``: a linear
    layer reading the network input (through shape-only layers). ``inputs_nonneg``: all inputs are
    structurally non-negative (outputs of ReLU, or pooling/reshaping/concatenating/adding them).
    ``gated``: every consumer of the output is a ReLU.
    """

    name: str
    kind: str
    description: str
    inputs: tuple[str, ...] = ()
    run: Callable | None = None  # evaluates the layer from the values of the earlier layers
    make_map: Callable | None = None  # linear layers: (input values) -> LinearMap; affine: (x, constant)
    constant: str | None = None  # affine layers: the helper layer holding the constant, if not a number
    pool: Callable | None = None  # max pooling: x -> (y, argmax)
    cat_dim: int = 1
    foldable: bool = False  # a conv/linear module a following batch norm may be folded into
    positive_weights: bool = False  # pooling and additions: non-negative inputs give non-negative outputs
    first: bool = False
    inputs_nonneg: bool = False
    gated: bool = False
    affine_chain: tuple[str, ...] = ()  # first layers: the affine layers between the input and it
    inplace_of: str | None = None  # an in-place ReLU: the fx node whose tensor it overwrites


@dataclass
class Graph:
    layers: list[Layer]
    output: str
    by_name: dict[str, Layer] = field(default_factory=dict)

    def check(self, method: str) -> None:
        bad = [layer for layer in self.layers if layer.kind == "unsupported"]
        if bad:
            raise UnsupportedLayerError(
                f"method {method!r} has no propagation rule for layer {bad[0].name!r} "
                f"({bad[0].description}); supported: Conv1d/2d/3d, Linear, BatchNorm, ReLU, max/avg/"
                "adaptive-avg pooling, flatten/view/reshape, dropout (eval), residual add, torch.cat, "
                "add/sub/mul/div by a constant")


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_graph(model: nn.Module) -> Graph:
    """The propagation graph of a (ReLU) model, traced once per model and cached (weakly, so the
    cache never keeps a model alive; changing the model's *structure* later is not seen).

    fx traces into the root module, so a lone layer (a bare nn.Linear) is traced as a one-layer net;
    its graph would refer to the cache key itself, so it is rebuilt each call instead of cached.
    """
    graph = _GRAPHS.get(model)
    if graph is None:
        if next(model.children(), None) is None:
            return _build_graph(nn.Sequential(model))
        graph = _build_graph(model)
        _GRAPHS[model] = graph
    return graph


def _build_graph(model: nn.Module) -> Graph:
    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:  # fx raises many kinds of errors for untraceable forwards
        raise UnsupportedLayerError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); "
            "modified-backprop methods need a traceable forward") from err
    nodes = list(traced.graph.nodes)
    node_names = {node.name for node in nodes}
    rename: dict[str, str] = {}  # fx node -> layer: module path, folded batch norm -> conv, in-place ReLU
    masks: set[str] = set()  # comparisons and zero constants: parts of a ReLU spelling only
    layers: dict[str, Layer] = {}
    tensors: set[str] = set()
    from_input: set[str] = set()
    chains: dict[str, tuple[str, ...]] = {}  # layer reading the input -> the affine layers on the way
    nonneg: set[str] = set()

    def name_of(node: fx.Node) -> str:
        return rename.get(node.name, node.name)

    def tensor_args(node: fx.Node) -> list[str]:
        found: list[str] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(name_of(n)) if name_of(n) in tensors else None)
        return found

    output = None
    for node in nodes:
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node) or name_of(result) not in tensors:
                raise UnsupportedLayerError("modified-backprop methods need a model returning one tensor of logits")
            output = name_of(result)
            continue
        if node.op == "placeholder":
            if any(layer.kind == "input" for layer in layers.values()):
                raise UnsupportedLayerError(f"model takes a second input {node.name!r}; only one input is supported")
            layer = Layer(node.name, "input", "network input")
            from_input.add(node.name)
        else:
            if node.op == "call_module" and node.target not in node_names and node.target not in layers:
                rename[node.name] = node.target  # the named_modules() path
            ins = tensor_args(node)
            layer = _classify(model, traced, node, name_of(node), ins, layers, rename, tensors)
            if layer is None:  # folded into the preceding conv/linear
                continue
            used_masks = [n.name for n in node.all_input_nodes if n.name in masks]
            if layer.kind == "helper" and layer.inputs == ("mask",):
                masks.add(node.name)
                layer.inputs = ()
            elif used_masks and layer.kind != "relu":
                layer = Layer(layer.name, "unsupported", f"{layer.description} reading the comparison or "
                              f"constant {used_masks[0]!r} (a data-dependent mask)")
            if layer.kind in ("shape", "affine") and ins and ins[0] in from_input:
                from_input.add(layer.name)
                chains[layer.name] = chains.get(ins[0], ()) + ((layer.name,) if layer.kind == "affine" else ())
            if layer.kind == "linear":
                layer.first = len(ins) == 1 and ins[0] in from_input
                layer.affine_chain = chains.get(ins[0], ()) if layer.first else ()
            layer.inputs_nonneg = bool(ins) and all(n in nonneg for n in ins)
            if layer.kind == "relu" or (layer.inputs_nonneg and layer.kind in ("maxpool", "shape", "cat")):
                nonneg.add(layer.name)
            if layer.kind == "linear" and layer.inputs_nonneg and layer.positive_weights:
                nonneg.add(layer.name)
            layer.run = layer.run or _generic_run(model, node, name_of)
        if layer.kind != "helper":
            tensors.add(layer.name)
        layers[layer.name] = layer
        if layer.inplace_of is not None:  # later readers of the modified tensor see the ReLU's output
            rename[layer.inplace_of] = layer.name
    users: dict[str, list[Layer]] = {}
    for layer in layers.values():
        for name in layer.inputs:
            users.setdefault(name, []).append(layer)
    for layer in layers.values():
        consumers = users.get(layer.name, [])
        layer.gated = bool(consumers) and all(c.kind == "relu" for c in consumers)
    graph = Graph(list(layers.values()), output)
    graph.by_name = layers
    return graph


def _generic_run(model, node: fx.Node, name_of) -> Callable:
    """Evaluate an fx node the way the model does (used for the layers without special forward)."""
    def resolve(env):
        return fx.node.map_arg((node.args, node.kwargs), lambda n: env[name_of(n)])

    if node.op == "call_module":
        module = model.get_submodule(node.target)

        def run_module(env):
            args, kwargs = resolve(env)
            return module(*args, **kwargs)
        return run_module
    if node.op == "get_attr":
        def run_attr(env):
            return functools.reduce(getattr, node.target.split("."), model)
        return run_attr
    if node.op == "call_method":
        def run_method(env):
            args, kwargs = resolve(env)
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return run_method

    def run_function(env):
        args, kwargs = resolve(env)
        return node.target(*args, **kwargs)
    return run_function


def _classify(model, traced, node: fx.Node, name: str, ins: list[str], layers: dict, rename: dict,
              tensors: set) -> Layer | None:
    """The Layer for one fx node (None when a batch norm is folded into its conv/linear)."""
    target = node.target
    activation = _activation_layer(model, traced, node, name, rename, tensors)
    if activation is not None:
        return activation
    if node.op == "get_attr":  # a buffer or parameter read in forward: a constant of affine layers
        return Layer(name, "helper", f"constant {target!r}")
    if node.op == "call_module":
        module = model.get_submodule(target)
        kind_name = f"{type(module).__name__} {target!r}"
        if type(module) in _CONV:
            return Layer(name, "linear", kind_name, tuple(ins), foldable=True,
                         make_map=lambda xs, m=module: ConvMap(m, m.weight, m.bias, xs))
        if type(module) is nn.Linear:
            return Layer(name, "linear", kind_name, tuple(ins), foldable=True,
                         make_map=lambda xs, m=module: DenseMap(m.weight, m.bias, xs))
        if type(module) in _BATCHNORM:
            return _batchnorm_layer(node, name, module, kind_name, ins, layers, rename)
        if type(module) in _MAXPOOL:
            dims = _MAXPOOL.index(type(module)) + 1
            params = dict(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                          dilation=module.dilation, ceil_mode=module.ceil_mode)
            return Layer(name, "maxpool", kind_name, tuple(ins),
                         pool=lambda x, f=_MAXPOOL_WITH_INDICES[dims]: f(x, **params, return_indices=True))
        if type(module) in _AVGPOOL:
            return Layer(name, "linear", kind_name, tuple(ins), positive_weights=True,
                         make_map=lambda xs, m=module: PoolMap(m, xs[0].new_ones(()), xs))
        if type(module) in _SHAPE_MODULES:
            return Layer(name, "shape", kind_name, tuple(ins))
        return Layer(name, "unsupported", kind_name)
    label = getattr(target, "__name__", str(target))
    if node.op == "call_method":
        if target in _SHAPE_METHODS and ins:
            return Layer(name, "shape", f"Tensor.{target}", tuple(ins[:1]))
        if target in _HELPER_METHODS:
            return Layer(name, "helper", f"Tensor.{target}")
        if target == "add" and len(ins) == 2 and not node.kwargs:
            return _sum_layer(name, ins, 1.0)
        if target in _AFFINE_METHODS and len(ins) == 1:
            return _affine_layer(node, name, _AFFINE_METHODS[target], ins, rename, f"Tensor.{target}")
        return Layer(name, "unsupported", f"Tensor.{target}")
    # call_function
    if target in _ADD_FUNCTIONS and len(ins) == 2 and set(node.kwargs) <= {"alpha"}:
        return _sum_layer(name, ins, float(node.kwargs.get("alpha", 1.0)))
    if target in _CAT_FUNCTIONS and ins:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if not isinstance(dim, int) or dim == 0:
            return Layer(name, "unsupported", f"{label} along dim {dim} (only non-batch dims)")
        return Layer(name, "cat", label, tuple(ins), cat_dim=dim)
    if target in _MAXPOOL_FUNCTIONS and len(ins) == 1:
        rest, kwargs = node.args[1:], {k: v for k, v in node.kwargs.items() if k != "return_indices"}
        f = _MAXPOOL_WITH_INDICES[_MAXPOOL_FUNCTIONS[target]]
        return Layer(name, "maxpool", label, tuple(ins), pool=lambda x: f(x, *rest, **kwargs, return_indices=True))
    if target in _AVGPOOL_FUNCTIONS and len(ins) == 1:
        rest, kwargs = node.args[1:], dict(node.kwargs)
        return Layer(name, "linear", label, tuple(ins), positive_weights=True,
                     make_map=lambda xs: PoolMap(lambda t: target(t, *rest, **kwargs), xs[0].new_ones(()), xs))
    if target in _SHAPE_FUNCTIONS and len(ins) == 1:
        if target is F.dropout and node.kwargs.get("training", len(node.args) > 2 and node.args[2]):
            return Layer(name, "unsupported", "F.dropout in training mode")
        return Layer(name, "shape", label, tuple(ins))
    if target in _HELPER_FUNCTIONS and (not ins or (target is getattr and len(ins) == 1)):
        return Layer(name, "helper", label)
    if target in _AFFINE_FUNCTIONS and len(ins) == 1:
        return _affine_layer(node, name, _AFFINE_FUNCTIONS[target], ins, rename, label)
    return Layer(name, "unsupported", label)


def _affine_layer(node: fx.Node, name: str, op: str, ins: list[str], rename: dict, label: str) -> Layer:
    """z = a x + b for x (op) c with a constant c: a number or a helper layer (a buffer)."""
    args = node.args
    if len(args) != 2 or node.kwargs:
        return Layer(name, "unsupported", f"{label} with arguments {args}, {dict(node.kwargs)}")
    tensor_first = isinstance(args[0], fx.Node) and rename.get(args[0].name, args[0].name) == ins[0]
    other = args[1] if tensor_first else args[0]
    if isinstance(other, fx.Node):
        constant = rename.get(other.name, other.name)
    elif isinstance(other, (int, float)) and not isinstance(other, bool):
        constant = None
    else:
        return Layer(name, "unsupported", f"{label} by {other!r}")
    if op == "div" and not tensor_first:
        return Layer(name, "unsupported", f"{label}: a constant divided by a tensor is not affine")

    def make_map(xs, value, op=op, tensor_first=tensor_first, number=other):
        c = torch.as_tensor(number if value is None else value, dtype=xs[0].dtype, device=xs[0].device)
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        a, b = {"add": (one, c), "sub": (one, -c) if tensor_first else (-one, c), "mul": (c, zero),
                "div": (1 / c, zero)}[op]
        return AffineMap(a, b, xs)
    return Layer(name, "affine", f"{label} by a constant", tuple(ins), make_map=make_map, constant=constant)


def _activation_layer(model, traced, node: fx.Node, name: str, rename: dict, tensors: set) -> Layer | None:
    """A ReLU layer for every ReLU spelling, an unsupported one for kinks and smooth activations;
    comparisons and zero constants become mask helpers (legal only inside a ReLU spelling)."""
    found = node_activation(model, traced, node)
    if found is None:
        return None
    if found.kind == "mask":
        value = getattr(traced, node.target) if node.op == "get_attr" else None
        return Layer(name, "helper", found.label, ("mask",), run=(lambda env: value) if node.op == "get_attr" else None)
    if found.kind != "relu":
        return Layer(name, "unsupported", found.label)
    source = found.source
    if not isinstance(source, fx.Node) or rename.get(source.name, source.name) not in tensors:
        return Layer(name, "unsupported", f"{found.label} of a non-tensor")
    return Layer(name, "relu", found.label, (rename.get(source.name, source.name),),
                 inplace_of=source.name if found.inplace else None)


def _sum_layer(name: str, ins: list[str], alpha: float) -> Layer:
    def make_map(xs):
        return SumMap(torch.tensor([1.0, alpha], dtype=xs[0].dtype, device=xs[0].device), None, xs)
    return Layer(name, "linear", "add (residual)", tuple(ins), positive_weights=alpha >= 0, make_map=make_map)


def _batchnorm_layer(node, name, bn, kind_name, ins, layers, rename) -> Layer | None:
    source = node.args[0] if node.args else None
    prev = layers.get(ins[0]) if ins else None
    if prev is not None and prev.foldable and isinstance(source, fx.Node) and len(source.users) == 1:
        inner = prev.make_map

        def folded(xs, inner=inner, bn=bn):
            plain = inner(xs)
            plain.weight, plain.bias = _fold_batchnorm(plain.weight, plain.bias, bn)
            return plain
        prev.make_map = folded
        prev.description += f" + {kind_name} (folded)"
        prev.foldable = False
        rename[node.name] = prev.name
        return None

    def diagonal(xs, bn=bn):
        scale, shift = _batchnorm_affine(bn)
        return DiagonalMap(scale, shift, xs)
    return Layer(name, "linear", f"{kind_name} (per-channel affine)", tuple(ins), make_map=diagonal)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the layers signals can be injected at / are recorded under, in forward order.

    The first is the input; a conv/linear with a folded batch norm is one layer named after the conv.
    """
    return [layer.name for layer in compile_graph(unwrap(model)[0]).layers if layer.kind != "helper"]


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
        if isinstance(module, _BATCHNORM) and module.running_var is None:
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
