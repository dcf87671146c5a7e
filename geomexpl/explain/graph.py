"""The model traced with torch.fx into a graph of named layers, each one kind the rules know.

Layer names are the ``named_modules()`` paths of module layers and fx node names of functional ones;
the layer kinds and what each spelling becomes are listed in :mod:`geomexpl.explain.propagation`.
"""
from __future__ import annotations

import functools
import operator
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from geomexpl.nets import unwrap
from geomexpl.explain.fx_activations import node_activation
from geomexpl.explain.linear_maps import (AffineMap, ConvMap, DenseMap, DiagonalMap, PoolMap, SumMap,
                                           batchnorm_affine, fold_batchnorm)


class UnsupportedLayerError(TypeError):
    """The model contains a layer that a propagation method has no rule for."""


# --------------------------------------------------------------------------------------------
# The traced graph
# --------------------------------------------------------------------------------------------
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
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
        if type(module) in BATCHNORMS:
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
            plain.weight, plain.bias = fold_batchnorm(plain.weight, plain.bias, bn)
            return plain
        prev.make_map = folded
        prev.description += f" + {kind_name} (folded)"
        prev.foldable = False
        rename[node.name] = prev.name
        return None

    def diagonal(xs, bn=bn):
        scale, shift = batchnorm_affine(bn)
        return DiagonalMap(scale, shift, xs)
    return Layer(name, "linear", f"{kind_name} (per-channel affine)", tuple(ins), make_map=diagonal)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the layers signals can be injected at / are recorded under, in forward order.

    The first is the input; a conv/linear with a folded batch norm is one layer named after the conv.
    """
    return [layer.name for layer in compile_graph(unwrap(model)[0]).layers if layer.kind != "helper"]

