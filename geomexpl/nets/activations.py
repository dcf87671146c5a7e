"""Which non-linearity a torch call computes: the one table behind the softplus twin and the engine.

A call is a *ReLU spelling* (``relu``, ``relu_``, ``clamp(min=0)``, ``clamp_min(0)``,
``maximum(z, 0)``, ``where(z > 0, z, 0)``, ``threshold(z, 0, 0)``, their in-place and Tensor-method
forms), a *kink* (abs, LeakyReLU, ReLU6, hardtanh, clamp with another bound, ...: refused, since a
softplus twin cannot smooth them and their level sets have creases), or a *smooth* non-linearity
(tanh, sigmoid, softplus, GELU, SiLU, ...: already smooth, left as they are). Anything else is not
a non-linearity of interest. :func:`classify` works on run-time values (the twin's torch-function
mode) and on ``torch.fx`` nodes (the propagation engine) alike, through two callbacks.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

T = torch.Tensor
_SPELLINGS = {
    "relu": (F.relu, torch.relu, T.relu), "relu_": (torch.relu_, T.relu_),
    "clamp": (torch.clamp, T.clamp, torch.clip, T.clip), "clamp_": (torch.clamp_, T.clamp_, torch.clip_, T.clip_),
    "clamp_min": (torch.clamp_min, T.clamp_min), "clamp_min_": (torch.clamp_min_, T.clamp_min_),
    "threshold": (F.threshold, torch.threshold), "threshold_": (torch.threshold_,),
    "maximum": (torch.maximum, T.maximum, torch.fmax, T.fmax, torch.max, T.max),
    "where": (torch.where, T.where),
}
_KINKS = {
    "abs": (torch.abs, T.abs, T.__abs__, torch.absolute, T.absolute, T.abs_), "sign": (torch.sign, T.sign),
    "leaky_relu": (F.leaky_relu, F.leaky_relu_), "relu6": (F.relu6,), "hardtanh": (F.hardtanh, F.hardtanh_),
    "elu": (F.elu, F.elu_), "selu": (F.selu, torch.selu_), "celu": (F.celu, torch.celu_), "prelu": (F.prelu,),
    "rrelu": (F.rrelu, F.rrelu_), "hardswish": (F.hardswish,), "hardsigmoid": (F.hardsigmoid,),
    "hardshrink": (F.hardshrink,), "softshrink": (F.softshrink,), "softsign": (F.softsign,),
    "minimum": (torch.minimum, T.minimum, torch.fmin, T.fmin, torch.min, T.min),
    "clamp_max": (torch.clamp_max, T.clamp_max, torch.clamp_max_, T.clamp_max_),
}
_SMOOTH = {
    "tanh": (torch.tanh, T.tanh, F.tanh), "sigmoid": (torch.sigmoid, T.sigmoid, F.sigmoid),
    "softplus": (F.softplus,), "gelu": (F.gelu,), "silu": (F.silu,), "mish": (F.mish,),
    "logsigmoid": (F.logsigmoid,),
}
COMPARISONS = {op: name for name, ops in {
    "gt": (torch.gt, T.gt, T.__gt__, operator.gt), "ge": (torch.ge, T.ge, T.__ge__, operator.ge),
    "lt": (torch.lt, T.lt, T.__lt__, operator.lt), "le": (torch.le, T.le, T.__le__, operator.le),
}.items() for op in ops}
SPELLING = {op: name for name, ops in _SPELLINGS.items() for op in ops}
KINK = {op: name for name, ops in _KINKS.items() for op in ops}
SMOOTH = {op: name for name, ops in _SMOOTH.items() for op in ops}
CALLS = {**{op: "relu?" for op in SPELLING}, **{op: "kink" for op in KINK}, **{op: "smooth" for op in SMOOTH},
         **{op: "compare" for op in COMPARISONS}}  # one dict lookup decides whether a call matters

KINKED_MODULES = (nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Hardswish, nn.ReLU6, nn.PReLU, nn.RReLU,
                  nn.Hardtanh, nn.Hardsigmoid, nn.Softsign, nn.Hardshrink, nn.Softshrink)


class Verdict(NamedTuple):
    """``kind`` 'relu' (of ``x``, ``inplace`` or not) or 'kink'; ``op`` names the call for messages."""

    kind: str
    op: str
    x: Any = None
    inplace: bool = False


def is_zero_number(v) -> bool:
    """v is the number 0 (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0


def method_call(target: str):
    """The function object of ``Tensor.<target>`` (how an fx call_method names it), or None."""
    return getattr(torch.Tensor, target, None)


def module_verdict(module: nn.Module) -> Verdict | None:
    """The verdict for an activation module: ReLU / Threshold(0, 0) or a kinked one."""
    if type(module) is nn.ReLU:
        return Verdict("relu", "nn.ReLU", inplace=module.inplace)
    if type(module) is nn.Threshold:
        if module.threshold == 0 and module.value == 0:
            return Verdict("relu", "nn.Threshold(0, 0)", inplace=module.inplace)
        return Verdict("kink", f"nn.Threshold({module.threshold}, {module.value})")
    if isinstance(module, KINKED_MODULES):
        return Verdict("kink", f"nn.{type(module).__name__}")
    return None


def _arg(args, kwargs, i: int, name: str, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


def classify(func: Callable, args: tuple, kwargs: dict, is_zero: Callable[[Any], bool],
             comparison: Callable[[Any], tuple | None], is_tensor: Callable[[Any], bool]) -> Verdict | None:
    """The verdict for ``func(*args, **kwargs)``; None when it is no ReLU spelling and no kink.

    ``is_zero(v)``: v is the constant 0 (a number or an all-zero constant tensor);
    ``comparison(c)``: ``(op, lhs, rhs)`` when the mask c was computed as ``lhs op rhs``;
    ``is_tensor(v)``: v is a tensor (value or fx node).
    """
    name = SPELLING.get(func)
    label = op_label(func)
    if name is None:
        return Verdict("kink", f"{label}: a kink (not differentiable)") if func in KINK else None
    inplace = name.endswith("_") or bool(_arg(args, kwargs, 1 if name == "relu" else 3, "inplace", False))
    base = name.rstrip("_")
    x = args[0] if args else kwargs.get("input")
    if base == "relu":
        return Verdict("relu", label, x, inplace)
    if base == "threshold":
        th, value = _arg(args, kwargs, 1, "threshold"), _arg(args, kwargs, 2, "value")
        if is_zero(th) and is_zero(value):
            return Verdict("relu", label, x, inplace)
        return Verdict("kink", f"{label}(threshold={th}, value={value}): a jump, not a ReLU")
    if base in ("clamp", "clamp_min"):
        low = _arg(args, kwargs, 1, "min")
        high = None if base == "clamp_min" else _arg(args, kwargs, 2, "max")
        if high is None and low is not None and is_zero(low):
            return Verdict("relu", f"{label}(min=0)", x, inplace)
        return Verdict("kink", f"{label}(min={_show(low)}, max={_show(high)}): a kink that is not a ReLU")
    if base == "maximum":
        other = _arg(args, kwargs, 1, "other")
        if func in (torch.max, T.max) and not is_tensor(other):
            return None  # a reduction (max over a dimension): max pooling, not an activation
        if is_zero(other) or is_zero(x):
            return Verdict("relu", f"{label}(z, 0)", other if is_zero(x) else x)
        return Verdict("kink", f"{label} of two tensors: a kink")
    # where(cond, a, b)
    cond, a, b = x, _arg(args, kwargs, 1, "input"), _arg(args, kwargs, 2, "other")
    found = comparison(cond)
    if found is None:
        return None  # a constant mask
    op, lhs, rhs = found
    if is_zero(rhs) and ((op in ("gt", "ge") and a is lhs and is_zero(b))
                         or (op in ("lt", "le") and b is lhs and is_zero(a))):
        return Verdict("relu", f"{label}(z {op} 0, ...)", lhs)
    return Verdict("kink", f"{label} with a condition computed from an activation ({op}): a kink or a jump")


_F_NAMES = {getattr(F, n): n for n in dir(F) if not n.startswith("_") and callable(getattr(F, n))}


def op_label(func) -> str:
    """'torch.clamp', 'Tensor.relu_', 'F.threshold', 'operator.gt': how a user wrote the call."""
    name = getattr(func, "__name__", str(func))
    owner = getattr(func, "__qualname__", name).rpartition(".")[0]
    if owner in ("TensorBase", "Tensor"):
        return f"Tensor.{name}"
    if func in _F_NAMES:
        return f"F.{_F_NAMES[func]}"
    if owner == "_VariableFunctionsClass" or getattr(torch, name, None) is func:
        return f"torch.{name}"
    return f"{getattr(func, '__module__', None) or owner}.{name}"


def _show(v):
    return "tensor" if isinstance(v, torch.Tensor) else v
