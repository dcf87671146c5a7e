"""Architectures with torchvision's module names and forward, written without torchvision.

A torchvision ``state_dict()`` of the same architecture loads into these with ``strict=True`` (through
:func:`geomexpl.nets.load_weights`, which reads with ``weights_only=True``). The layouts follow the
torchvision model documentation (Simonyan & Zisserman 2015 for VGG-16).
"""
from __future__ import annotations

import torch
from torch import nn

#: VGG-16 ("configuration D"): output channels of the 13 convolutions, "M" a 2x2 max-pool.
VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """torchvision's ``VGG``: ``features`` -> ``avgpool`` (7x7) -> ``torch.flatten`` -> ``classifier``."""

    def __init__(self, plan=VGG16_PLAN, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(c * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


_BUILDERS = {"vgg16": lambda num_classes: VGG(VGG16_PLAN, num_classes)}


def torchvision_like(name: str, num_classes: int = 1000) -> nn.Module:
    """An untrained network with torchvision's layout of ``name``, in eval mode."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown torchvision architecture {name!r}; choose one of {sorted(_BUILDERS)}")
    return _BUILDERS[name](num_classes).eval()
