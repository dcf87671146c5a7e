"""The network the attack differentiates, prepared once per attack (issue 12: no pass the maths does
not need).

Batch norm that follows a conv/linear is folded into it, W' = W gamma / sigma and
b' = (b - mu) gamma / sigma + beta_bn: exact in eval mode, and it removes the batch norm's forward,
backward and double backward from every step. The folded copy is only used inside the attack; the
result is evaluated on the user's model.
"""
from __future__ import annotations

from torch import nn
from torch.fx.experimental.optimization import fuse

from geomexpl.explain import Patterns

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every conv/linear -> batch norm pair fused (a copy); ``model`` itself when it
    has no batch norm, is in training mode, or cannot be traced by torch.fx."""
    if model.training or not any(isinstance(m, _BATCHNORM) for m in model.modules()):
        return model
    try:
        folded = fuse(model)
    except Exception:  # noqa: BLE001 - fx raises many kinds of errors for untraceable forwards
        return model
    return folded.requires_grad_(False)


def on_device(options: dict, like) -> dict:
    """Method options with tensors held by them (PatternNet's patterns) moved once to ``like``'s
    device and dtype, so that no step uploads them again."""
    return {k: v.to(like) if isinstance(v, Patterns) else v for k, v in options.items()}
