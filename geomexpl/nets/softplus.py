"""ReLU -> softplus_beta twins (the attack's beta growth and the beta-smoothing defence, paper sec. 4).

softplus_beta(z) = log(1 + exp(beta z)) / beta, whose derivative is sigmoid(beta z); it tends to
relu as beta -> inf. The twin runs the original module's own ``forward`` under a
:class:`torch.overrides.TorchFunctionMode` that replaces every relu call (``nn.ReLU`` modules, reused
or ``inplace``, and ``torch.relu`` / ``F.relu`` / ``Tensor.relu`` inside ``forward``) by softplus_beta.
It therefore shares the parameters: nothing is copied and the original model is never modified.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_RELU_CALLS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_UNSUPPORTED_CALLS = {
    F.gelu: "GELU", F.leaky_relu: "LeakyReLU", F.elu: "ELU", F.selu: "SELU", F.celu: "CELU",
    F.silu: "SiLU", F.mish: "Mish", F.hardswish: "Hardswish", F.relu6: "ReLU6", F.prelu: "PReLU",
    F.rrelu: "RReLU", F.hardtanh: "Hardtanh", F.softplus: "Softplus", F.logsigmoid: "LogSigmoid",
}
_UNSUPPORTED_MODULES = (nn.GELU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.SiLU, nn.Mish,
                        nn.Hardswish, nn.ReLU6, nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Softplus,
                        nn.LogSigmoid, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid, nn.Softsign, nn.Threshold)


class UnsupportedActivationError(TypeError):
    """The network uses an activation other than ReLU, which has no softplus_beta twin."""


def softplus_beta(z: torch.Tensor, beta: float | None) -> torch.Tensor:
    """softplus_beta(z) = log(1 + e^{beta z}) / beta; relu(z) for beta None or inf."""
    if beta is None or math.isinf(beta):
        return torch.relu(z)
    return F.softplus(z, beta=beta, threshold=20.0)


def check_activations(model: nn.Module) -> None:
    """Raise :class:`UnsupportedActivationError` naming the first non-ReLU activation module."""
    for name, module in model.named_modules():
        if isinstance(module, _UNSUPPORTED_MODULES):
            raise UnsupportedActivationError(
                f"layer {name or '<root>'!r} is {type(module).__name__}: only ReLU networks have a "
                "softplus_beta twin (replace it by nn.ReLU, or handle it explicitly)")


class _ReluAsSoftplus(TorchFunctionMode):
    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_CALLS:
            return F.softplus(args[0], beta=self.beta, threshold=20.0)
        if func in _UNSUPPORTED_CALLS:
            raise UnsupportedActivationError(
                f"forward calls {_UNSUPPORTED_CALLS[func]} ({func.__name__}): only ReLU networks have "
                "a softplus_beta twin")
        return func(*args, **kwargs)


class SoftplusTwin(nn.Module):
    """The network ``model`` with every ReLU replaced by softplus_beta, sharing its parameters."""

    def __init__(self, model: nn.Module, beta: float | None):
        super().__init__()
        if isinstance(model, SoftplusTwin):
            model = model.model
        if beta is not None and not (beta > 0):
            raise ValueError(f"beta must be positive (or None/inf for ReLU), got {beta}")
        check_activations(model)
        self.model = model
        self.beta = None if beta is None or math.isinf(beta) else float(beta)

    def forward(self, *args, **kwargs):
        if self.beta is None:
            return self.model(*args, **kwargs)
        with _ReluAsSoftplus(self.beta):
            return self.model(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def softplus_twin(model: nn.Module, beta: float | None) -> SoftplusTwin:
    """``model`` computed with softplus_beta instead of ReLU (beta None or inf: ReLU itself)."""
    return SoftplusTwin(model, beta)


def unwrap(model: nn.Module) -> tuple[nn.Module, float | None]:
    """``(original ReLU model, beta)`` of a twin; ``(model, None)`` for a plain model."""
    if isinstance(model, SoftplusTwin):
        return model.model, model.beta
    return model, None


def beta_schedule(beta0: float, beta_end: float, steps: int) -> list[float]:
    """Beta growth of supplement A.1, eq. (1): beta(t) = beta0 (beta_e / beta0)^(t / T), t = 0..T-1."""
    if beta0 <= 0 or beta_end <= 0 or steps < 1:
        raise ValueError(f"beta schedule needs beta0, beta_end > 0 and steps >= 1, got {beta0}, {beta_end}, {steps}")
    return [beta0 * (beta_end / beta0) ** (t / steps) for t in range(steps)]
