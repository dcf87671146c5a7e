"""Small model zoo in plain torch, for square inputs whose side is a multiple of 32 (digits and
faces at 32x32 grey, photos at 64x64 or 128x128 RGB).

Each architecture keeps the defining structure of its namesake (supplement C): VGG-16's 13 3x3
convolutions in five pooled stages and three dense layers, ResNet-18's eight basic blocks with
residual additions, AlexNet's five convolutions with large early kernels and dropout head, and
DenseNet's channel concatenation. Widths are scaled down so each trains in about a minute on 2 cores.
"""
from __future__ import annotations

import torch
from torch import nn

ARCHS = ("vgg", "resnet", "alexnet", "densenet", "mlp")


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU()]


VGG16_PLAN = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")  # width multiples, "M" = max-pool
DEPTH_STAGES = {  # conv layers per pooled stage of the depth study's VGG-style nets, by total conv depth
    4: (1, 1, 1, 1, 0), 8: (1, 1, 2, 2, 2), 11: (1, 2, 2, 3, 3), 13: (2, 2, 3, 3, 3), 16: (2, 2, 4, 4, 4),
    19: (3, 3, 4, 4, 5),
}


def vgg(in_channels: int = 1, num_classes: int = 10, width: int = 16, size: int = 32,
        plan=VGG16_PLAN) -> nn.Sequential:
    """VGG-style: conv+BN+ReLU layers of ``width`` x the plan's multiples in 5 max-pooled stages, then
    3 dense layers; the default plan is VGG-16's 13 convolutions."""
    layers: list[nn.Module] = []
    c = in_channels
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += _conv_bn_relu(c, width * item)
            c = width * item
    layers += [nn.Flatten(), nn.Linear(c * (size // 32) ** 2, 128), nn.ReLU(), nn.Dropout(0.3),
               nn.Linear(128, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, num_classes)]
    return nn.Sequential(*layers)


def vgg_of_depth(depth: int, in_channels: int = 1, num_classes: int = 10, width: int = 16,
                 size: int = 32) -> nn.Sequential:
    """A VGG-style net of ``depth`` convolutions (a key of :data:`DEPTH_STAGES`), all ``width`` wide,
    in 5 max-pooled stages: the depth study's nets (VGG-11/16/19's plans at depths 8/13/16)."""
    if depth not in DEPTH_STAGES:
        raise ValueError(f"depth must be one of {sorted(DEPTH_STAGES)}, got {depth!r}")
    plan = [item for n in DEPTH_STAGES[depth] for item in (1,) * n + ("M",)]
    model = vgg(in_channels, num_classes, width, size, plan)
    model.register_forward_pre_hook(InputCheck(f"vgg-{depth}", in_channels, size))
    return model


def alexnet(in_channels: int = 1, num_classes: int = 10, width: int = 16, size: int = 32) -> nn.Sequential:
    """AlexNet-style: 5 convolutions (5x5 first), 3 max-pools, a 3-layer dense head with dropout."""
    w = width
    return nn.Sequential(
        nn.Conv2d(in_channels, 2 * w, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4 * w, 6 * w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6 * w, 6 * w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * w * (size // 8) ** 2, 256), nn.ReLU(),
        nn.Dropout(0.3), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


def resnet(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Sequential:
    """ResNet-18-style: a 3x3 stem, four stages of two basic blocks, global average pooling."""
    layers: list[nn.Module] = _conv_bn_relu(in_channels, width)
    c = width
    for stage, mult in enumerate((1, 2, 4, 8)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(c, width * mult, stride))
            c = width * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


class DenseLayer(nn.Module):
    """DenseNet layer: concatenate the input with conv(relu(bn(x)))."""

    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], dim=1)


def densenet(in_channels: int = 1, num_classes: int = 10, growth: int = 12) -> nn.Sequential:
    """DenseNet-style: three dense blocks of four layers, transitions with 1x1 conv and avg-pooling."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 2 * growth, 3, padding=1, bias=False)]
    c = 2 * growth
    for block in range(3):
        for _ in range(4):
            layers.append(DenseLayer(c, growth))
            c += growth
        if block < 2:
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def mlp(in_channels: int = 1, num_classes: int = 10, size: int = 32) -> nn.Sequential:
    """Three hidden ReLU layers on the flattened image."""
    d = in_channels * size * size
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes))


class InputCheck:
    """Forward pre-hook of a zoo net: a [B, C, size, size] input in the weights' dtype, or a clear error.

    A hook, not a forward: torch.fx traces the unchanged Sequential, and state dicts keep their keys.
    """

    def __init__(self, arch: str, channels: int, size: int):
        self.arch, self.channels, self.size = arch, channels, size

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        want = (self.channels, self.size, self.size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"the zoo {self.arch} takes a batch [B, {self.channels}, {self.size}, {self.size}], "
                             f"got {got}" + (" (add the batch dimension: x[None])" if
                                              isinstance(x, torch.Tensor) and tuple(x.shape) == want else ""))
        dtype = next(module.parameters()).dtype
        if x.dtype != dtype:
            raise ValueError(f"the zoo {self.arch} has {dtype} weights but the input is {x.dtype}: "
                             f"convert one of them (x.to({dtype}) or model.to({x.dtype}))")


def build(arch: str, in_channels: int = 1, num_classes: int = 10, size: int = 32) -> nn.Module:
    """An untrained zoo network by name (one of :data:`ARCHS`) for ``size`` x ``size`` inputs, checking
    its input's shape and dtype.

    Widths shrink as the input grows (16 channels in the first stage at 32x32, 8 at 64x64, 4 from
    128x128) so that a forward pass costs about the same per image on a CPU.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHS}")
    width = max(4, 16 * 32 // size)  # narrower for larger inputs: about the same cost per image
    if arch == "mlp":
        model = mlp(in_channels, num_classes, size)
    elif size < 32 or size % 32:
        raise ValueError(f"the convolutional zoo models take inputs whose side is a multiple of 32, got size {size}")
    elif arch in ("vgg", "alexnet"):  # their dense head sees the flattened feature map
        model = {"vgg": vgg, "alexnet": alexnet}[arch](in_channels, num_classes, width, size)
    elif arch == "densenet":
        model = densenet(in_channels, num_classes, growth=max(4, 12 * 32 // size))
    else:
        model = resnet(in_channels, num_classes, width)
    model.register_forward_pre_hook(InputCheck(arch, in_channels, size))
    return model
