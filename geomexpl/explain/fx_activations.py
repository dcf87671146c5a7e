"""The non-linearity an fx node computes, by the table of :mod:`geomexpl.nets.activations`.

The propagation engine asks :func:`node_activation` about every node: a ReLU spelling (with the
node it rectifies and whether it overwrites it in place), a kink or a smooth activation (both have
no propagation rule), or a *mask* (a comparison or a zero constant, legal only inside a ReLU
spelling such as ``where(z > 0, z, 0)``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.fx as fx
from torch import nn

from geomexpl.nets.activations import CALLS, COMPARISONS, classify, is_zero_number, method_call, module_verdict

ZERO_FUNCTIONS = {torch.zeros_like, torch.zeros}


class NodeActivation(NamedTuple):
    """``kind``: 'relu', 'kink', 'smooth' or 'mask'; ``source``: the rectified node (ReLU)."""

    kind: str
    label: str
    source: fx.Node | None = None
    inplace: bool = False


def node_activation(model: nn.Module, traced: fx.GraphModule, node: fx.Node) -> NodeActivation | None:
    """What ``node`` computes, when it is a non-linearity or a mask; else None."""
    if node.op == "get_attr":
        return NodeActivation("mask", "zero constant") if is_zero_node(traced, node) else None
    if node.op == "call_module":
        verdict = module_verdict(model.get_submodule(node.target))
        if verdict is None:
            return None
        return NodeActivation(verdict.kind, f"{verdict.op} {node.target!r}", node.args[0] if node.args else None,
                              verdict.inplace)
    if node.op not in ("call_function", "call_method"):
        return None
    func = node.target if node.op == "call_function" else method_call(node.target)
    if is_zero_node(traced, node):
        return NodeActivation("mask", "zeros")
    kind = CALLS.get(func)
    if kind in (None, "compare"):
        return None if kind is None else NodeActivation("mask", "comparison")
    if kind == "smooth":
        name = node.target if node.op == "call_method" else func.__name__
        return NodeActivation("smooth", f"{name}: a smooth activation other than ReLU")
    verdict = classify(func, node.args, node.kwargs, lambda v: is_zero_node(traced, v), comparison_node,
                       lambda v: isinstance(v, fx.Node))
    if verdict is None:
        return None
    return NodeActivation(verdict.kind, verdict.op, verdict.x, verdict.inplace)


def comparison_node(node) -> tuple | None:
    """``(op, lhs, rhs)`` of an fx comparison node, else None."""
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method") or len(node.args) != 2:
        return None
    func = node.target if node.op == "call_function" else method_call(node.target)
    return (COMPARISONS[func], *node.args) if func in COMPARISONS else None


def is_zero_node(traced: fx.GraphModule, v) -> bool:
    """v is the constant 0: a number, zeros_like/zeros/new_zeros, or an all-zero constant tensor."""
    if not isinstance(v, fx.Node):
        return is_zero_number(v)
    if (v.op == "call_function" and v.target in ZERO_FUNCTIONS) or (v.op == "call_method" and v.target == "new_zeros"):
        return True
    if v.op == "get_attr":
        value = getattr(traced, v.target, None)
        return (isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.numel() > 0
                and not bool(value.any()))
    return False
