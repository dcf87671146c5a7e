"""C~ of Theorem 1 for any traced network (residual additions, concatenation, max-pooling).

Supplement eq. (10) is written for a chain of layers. The same bound follows, for any graph of
layers, from carrying two numbers through the network in topological order: for every intermediate
value z(x), J bounds its Lipschitz constant |Dz|_2 and K bounds its curvature
sup_{|u|=1} |D^2 z[u, u]|_2. With z' the next value:

    linear map A (Linear, Conv, BatchNorm, AvgPool):  J' = |A|_2 J,          K' = |A|_2 K
    softplus_beta (sigma' <= 1, 0 < sp'' <= beta/4):  J' = J,                K' = K + (beta/4) J^2
    addition z1 + z2 (residual):                      J' = J1 + J2,          K' = K1 + K2
    concatenation [z1, z2]:                           J' = sqrt(J1^2 + J2^2), K' = sqrt(K1^2 + K2^2)
    max-pooling (a.e. a selection, each input in at most m windows): J' = sqrt(m) J, K' = sqrt(m) K

so |H g_k(x)|_2 <= K_out. Written as K = beta * C (every softplus adds a term linear in beta), and
with the paper's convention sp'' <= beta (eq. (9), no factor 1/4), the returned C~ satisfies
|H|_2 <= beta C~ / 4 <= beta C~ and, for a chain, equals eq. (10) with spectral norms.

Max-pooling is only piecewise linear: the twin is smooth between the switching surfaces of its
max-pools, where its Hessian exists and obeys the bound; on those surfaces the gradient can jump,
which Theorem 1 (stated for softplus networks) does not cover.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from geomexpl.geometry.operator_norms import CONVS, batchnorm_scale, pool_as_conv, weight_norms
from geomexpl.nets.softplus import unwrap

_PASS_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_PASS_FUNCTIONS = {torch.flatten, torch.reshape, operator.getitem}
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous", "size"}
_RELU_FUNCTIONS = {torch.relu, F.relu}
_RELU_METHODS = {"relu"}


def graph_curvature_constant(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """C~ with |Hessian of any logit|_2 <= beta C~ at every point where the twin is smooth.

    ``model``: a softplus twin (or a network with nn.Softplus) built from Linear/Conv/BatchNorm
    (eval)/Avg- and MaxPool2d/Flatten/Dropout (eval), ReLUs, additions and concatenations.
    """
    inner, _ = unwrap(model)
    try:
        traced = fx.symbolic_trace(inner)
    except Exception as err:  # fx raises many error types for untraceable code
        raise ValueError(f"cannot trace {type(inner).__name__} with torch.fx: {err}") from err
    modules = dict(traced.named_modules())
    param = next(inner.parameters(), None)
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    x = x.to(dtype=param.dtype, device=param.device) if param is not None else x
    folded = _batchnorms_to_fold(traced, modules)
    values: dict[str, torch.Tensor] = {}
    bounds: dict[str, tuple[float, float]] = {}   # node -> (J, C) with K = beta * C
    result = None
    with torch.no_grad():
        for node in traced.graph.nodes:
            args = fx.node.map_arg(node.args, lambda n: values[n.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n.name])
            inputs = [bounds[n.name] for n in node.all_input_nodes if n.name in bounds]
            if node.op == "placeholder":
                values[node.name], bounds[node.name] = x, (1.0, 0.0)
                continue
            if node.op == "output":
                result = inputs[0]
                break
            if node.op == "get_attr":
                raise ValueError(f"node {node.name!r} reads a parameter inside forward; not supported")
            fn = modules[node.target] if node.op == "call_module" else node.target
            out = fn(*args, **kwargs) if node.op != "call_method" else getattr(args[0], fn)(*args[1:], **kwargs)
            values[node.name] = out
            bounds[node.name] = _propagate(node, fn, args, inputs, folded)
    return result[1]


def _batchnorms_to_fold(traced: fx.GraphModule, modules: dict) -> dict[str, torch.Tensor]:
    """Linear/Conv node name -> scale of the eval BatchNorm that is its only user (folded into it)."""
    folded = {}
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], (nn.Linear, *CONVS)):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(
                modules[users[0].target], (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            folded[node.name] = batchnorm_scale(users[0].target, modules[users[0].target])
            folded[users[0].name] = None
    return folded


def _propagate(node: fx.Node, fn, args, inputs: list[tuple[float, float]],
               folded: dict) -> tuple[float, float]:
    """(J, C) of a node's output from those of its inputs (see the module docstring)."""
    if node.op == "call_module":
        module = fn
        if folded.get(node.name, 0) is None:     # a BatchNorm already folded into its conv
            return inputs[0]
        if node.name in folded:
            weight = module.weight.detach().double()
            weight = weight * folded[node.name].view(-1, *[1] * (weight.dim() - 1))
            scale = weight_norms(weight, module, args[0])[1]
            return scale * inputs[0][0], scale * inputs[0][1]
        if isinstance(module, (nn.ReLU, nn.Softplus)):
            j, c = inputs[0]
            return j, c + j * j
        if isinstance(module, _PASS_MODULES):
            if module.training and isinstance(module, nn.modules.dropout._DropoutNd):
                raise ValueError(f"layer {node.target!r} (Dropout) is in training mode; call model.eval()")
            return inputs[0]
        scale = _spectral_norm(node.target, module, args[0])
        return scale * inputs[0][0], scale * inputs[0][1]
    name = getattr(fn, "__name__", str(fn))
    if (node.op == "call_function" and fn in _RELU_FUNCTIONS) or (node.op == "call_method" and fn in _RELU_METHODS):
        j, c = inputs[0]
        return j, c + j * j
    if (node.op == "call_function" and fn in _PASS_FUNCTIONS) or (node.op == "call_method" and fn in _PASS_METHODS):
        return inputs[0]
    if node.op == "call_function" and fn in (operator.add, torch.add):
        return sum(j for j, _ in inputs), sum(c for _, c in inputs)
    if node.op == "call_function" and fn is torch.cat:
        return math.sqrt(sum(j * j for j, _ in inputs)), math.sqrt(sum(c * c for _, c in inputs))
    raise ValueError(f"node {node.name!r} ({name}) is not supported by the curvature constant: only "
                     "Linear, Conv, BatchNorm (eval), Avg/MaxPool2d, Flatten, Dropout, ReLU/softplus, "
                     "addition and concatenation")


def _spectral_norm(name: str, module: nn.Module, x_in: torch.Tensor) -> float:
    """Upper bound of the spectral norm of a layer's (local) linear map at input ``x_in``."""
    if isinstance(module, (nn.Linear, *CONVS)):
        return weight_norms(module.weight.detach().double(), module, x_in)[1]
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return float(batchnorm_scale(name, module).abs().max())
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return weight_norms(*pool_as_conv(name, module, x_in))[1]
    if isinstance(module, nn.MaxPool2d):
        kernel = nn.modules.utils._pair(module.kernel_size)
        stride = nn.modules.utils._pair(module.stride or module.kernel_size)
        if module.dilation not in (1, (1, 1)):
            raise ValueError(f"layer {name!r}: dilated MaxPool2d is not supported")
        windows = math.prod(math.ceil(k / s) for k, s in zip(kernel, stride))
        return math.sqrt(windows)
    raise ValueError(f"layer {name!r} ({type(module).__name__}) is not supported by the curvature constant")
