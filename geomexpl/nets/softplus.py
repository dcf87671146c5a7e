"""ReLU -> softplus_beta twins (the attack's beta growth and the beta-smoothing defence, paper sec. 4).

softplus_beta(z) = log(1 + exp(beta z)) / beta, whose derivative is sigmoid(beta z); it tends to
relu as beta -> inf. The twin runs the original module's own ``forward`` under a
:class:`torch.overrides.TorchFunctionMode` that replaces every ReLU spelling (see
:mod:`geomexpl.nets.activations`: ``nn.ReLU`` modules, reused or ``inplace``, ``F.relu``,
``Tensor.relu_`` with or without use of its result, ``clamp(min=0)``, ``maximum(z, 0)``,
``where(z > 0, z, 0)``, ``threshold(z, 0, 0)``) by softplus_beta, passes smooth non-linearities
(tanh, sigmoid, softplus, GELU, SiLU) through, and refuses kinks (abs, LeakyReLU, ReLU6, hardtanh,
other clamps) with the op's name. It shares the parameters: nothing is copied and the original
model is never modified. The mode costs one dictionary lookup per torch call: against a twin made by
swapping modules (which would miss functional ReLUs) an attack step takes 0.98-1.09x as long on the
zoo VGG/ResNet and 1.2x (0.1-0.2 ms) on the MLP (``benchmarks/twin_overhead.csv``, one thread).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from geomexpl.nets.activations import CALLS, COMPARISONS, SMOOTH, classify, is_zero_number, module_verdict


class UnsupportedActivationError(TypeError):
    """The network uses a kinked activation that a softplus_beta twin cannot smooth."""


def softplus_beta(z: torch.Tensor, beta: float | None) -> torch.Tensor:
    """softplus_beta(z) = log(1 + e^{beta z}) / beta; relu(z) for beta None or inf."""
    if beta is None or math.isinf(beta):
        return torch.relu(z)
    return F.softplus(z, beta=beta, threshold=20.0)


def check_activations(model: nn.Module) -> None:
    """Raise :class:`UnsupportedActivationError` naming the first kinked activation module."""
    for name, module in model.named_modules():
        verdict = module_verdict(module)
        if verdict is not None and verdict.kind == "kink":
            raise UnsupportedActivationError(
                f"layer {name or '<root>'!r} is {verdict.op}, a kinked activation: a softplus_beta twin "
                "smooths only ReLUs (replace it by nn.ReLU or a smooth activation such as nn.GELU)")


def _is_zero(v) -> bool:
    if isinstance(v, torch.Tensor):
        return not v.requires_grad and v.numel() > 0 and not bool(v.any())
    return is_zero_number(v)


class _ReluAsSoftplus(TorchFunctionMode):
    """Replaces the ReLU spellings of one forward pass; counts them and the smooth activations."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta
        self.relus = 0
        self.smooth: set[str] = set()
        self._masks: dict[int, tuple] = {}  # id(comparison result) -> (op, lhs, rhs, result)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = CALLS.get(func)
        if kind is None:
            return func(*args, **kwargs)
        if kind == "compare":
            out = func(*args, **kwargs)
            if len(args) == 2 and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                self._masks[id(out)] = (COMPARISONS[func], args[0], args[1], out)
            return out
        if kind == "smooth":
            self.smooth.add(SMOOTH[func])
            return func(*args, **kwargs)
        verdict = classify(func, args, kwargs, _is_zero, self._comparison, lambda v: isinstance(v, torch.Tensor))
        if verdict is None:
            return func(*args, **kwargs)
        if verdict.kind == "kink":
            raise UnsupportedActivationError(
                f"forward calls {verdict.op}: a softplus_beta twin smooths only ReLUs (write the ReLU as "
                "nn.ReLU / F.relu, or use a smooth activation)")
        self.relus += 1
        z = verdict.x
        if not verdict.inplace:
            return F.softplus(z, beta=self.beta, threshold=20.0)
        # in place: the caller may discard the result and read z; softplus keeps its own input copy
        source = z.clone() if torch.is_grad_enabled() and z.requires_grad else z
        return z.copy_(F.softplus(source, beta=self.beta, threshold=20.0))

    def _comparison(self, mask):
        found = self._masks.get(id(mask)) if isinstance(mask, torch.Tensor) else None
        return found[:3] if found is not None and found[3] is mask else None


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
        mode = _ReluAsSoftplus(self.beta)
        with mode:
            out = self.model(*args, **kwargs)
        if not mode.relus and mode.smooth:
            raise UnsupportedActivationError(
                f"the network has no ReLU (its non-linearities: {', '.join(sorted(mode.smooth))}), so its "
                "softplus_beta twin is the network itself: it is already smooth. Drop beta=, and in "
                "manipulate pass beta_growth=None (the attack then differentiates the network directly)")
        return out

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def count_relus(model: nn.Module, x: torch.Tensor) -> int:
    """How many ReLU spellings one forward pass of ``model`` on ``x`` computes (kinks raise).

    The pass runs in eval mode (each module's mode is restored after), so counting never updates a
    batch-norm's running statistics or draws a dropout mask."""
    mode = _ReluAsSoftplus(1.0)
    training = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), mode:
            model(x)
    finally:
        for module, flag in training.items():
            module.train(flag)
    return mode.relus


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
