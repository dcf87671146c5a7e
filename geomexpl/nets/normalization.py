"""An input normalisation in front of a model: inputs stay in [0, 1], the model sees (x - mean) / std.

torchvision's ImageNet models expect normalised inputs; wrapping them keeps every geomexpl tool in
pixel space: the data bounds, the attack's clamping, SmoothGrad's noise and the maps all refer to
[0, 1] pixels. The propagation engine reads the wrapper as two elementwise affine layers
(``sub`` and ``div`` by a buffer): LRP passes relevance through them unchanged and its zB rule uses
the normalised bounds (lower - mean) / std, (upper - mean) / std.
"""
from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalized(nn.Module):
    """``model((x - mean) / std)`` with per-channel ``mean``/``std`` buffers of shape [1, C, 1, 1]."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        mean, std = (torch.as_tensor(v, dtype=torch.float32).flatten() for v in (mean, std))
        if mean.shape != std.shape or mean.numel() == 0:
            raise ValueError(f"mean and std need one value per channel each, got {tuple(mean.shape)} and "
                             f"{tuple(std.shape)}")
        if not bool((std > 0).all()) or not bool(torch.isfinite(mean).all() & torch.isfinite(std).all()):
            raise ValueError(f"std must be positive and mean/std finite, got mean {mean.tolist()}, std {std.tolist()}")
        self.model = model
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def with_normalization(model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> nn.Module:
    """``model`` behind a per-channel normalisation (default: torchvision's ImageNet statistics),
    in the model's train/eval mode, on its device and dtype."""
    wrapped = Normalized(model, mean, std).train(model.training)
    ref = next(iter(model.parameters()), None)
    return wrapped if ref is None else wrapped.to(device=ref.device, dtype=ref.dtype)
