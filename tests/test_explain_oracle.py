"""Explanations against Captum, an independent implementation (skipped when Captum is absent).

Random float64 ReLU CNNs with nn.ReLU modules (Captum overrides module backward passes), batch
norm, max / avg / adaptive-avg pooling, a residual addition and a concatenation. Gradient,
gradient x input, integrated gradients (Captum's 'riemann_middle' is our midpoint rule), Guided
Backprop and Deconvnet must agree to float precision. DeepLIFT-Rescale agrees with Captum on nets
without max pooling; with max pooling both satisfy summation to delta but break ties in a constant
reference feature map differently (see test_explain_properties for the summation property).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from geomexpl.explain import explain

captum_attr = pytest.importorskip("captum.attr")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class CaptumResNet(nn.Module):
    """Every layer type with module ReLUs used once each; ``maxpool`` toggles the max pooling."""

    def __init__(self, maxpool: bool):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.relu0 = nn.ReLU()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if maxpool else nn.Identity()
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.avg2 = nn.AvgPool2d(2 if maxpool else 4)
        self.fc1 = nn.Linear(32, 6)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = self.relu0(self.stem(x))
        x = self.relu2(x + self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        x = self.pool(x)
        x = torch.cat([self.avg(x), self.avg2(x)], 1).flatten(1)
        return self.fc2(self.relu3(self.fc1(x)))


def make_net(seed: int, maxpool: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    net = CaptumResNet(maxpool)
    net.bn1.running_mean.normal_(0, 0.1)
    net.bn1.running_var.uniform_(0.5, 1.5)
    net.bn1.weight.data.uniform_(0.5, 1.5)
    net.bn1.bias.data.normal_(0, 0.1)
    return net.double().eval()


def sequential_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Dropout(0.5), nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()


NETS = [("residual", lambda seed: make_net(seed)), ("sequential", sequential_net)]


def inputs(seed: int) -> torch.Tensor:
    return torch.rand(4, 2, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def captum(kind: str, net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    if kind == "gradient":
        return captum_attr.Saliency(net).attribute(x, target=target, abs=False)
    if kind == "grad_x_input":
        return captum_attr.InputXGradient(net).attribute(x, target=target)
    if kind == "integrated_gradients":
        return captum_attr.IntegratedGradients(net).attribute(x, target=target, n_steps=30, method="riemann_middle")
    if kind == "guided_backprop":
        return captum_attr.GuidedBackprop(net).attribute(x, target=target)
    return captum_attr.Deconvolution(net).attribute(x, target=target)


@pytest.mark.parametrize("net_name, build", NETS)
@pytest.mark.parametrize("method", ["gradient", "grad_x_input", "integrated_gradients", "guided_backprop",
                                    "deconvnet"])
@pytest.mark.parametrize("seed", [0, 1])
def test_method_matches_captum(method, net_name, build, seed):
    net, x = build(seed), inputs(seed)
    target = torch.arange(4) % 3  # not only the predicted class
    ours = explain(net, x, method, target)
    expected = captum(method, net, x, target).detach()
    assert float(expected.abs().max()) > 0
    # Captum's IG multiplies by float32 step sizes, hence its looser tolerance
    tol = 1e-6 if method == "integrated_gradients" else 1e-12
    torch.testing.assert_close(ours, expected, rtol=tol, atol=tol * float(expected.abs().max()))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("reference", ["zeros", "images"])
def test_deeplift_rescale_matches_captum_without_max_pooling(seed, reference):
    net, x = make_net(seed, maxpool=False), inputs(seed)
    target = torch.arange(4) % 3
    baseline = None if reference == "zeros" else inputs(seed + 10)
    ours = explain(net, x, "deeplift", target, reference=baseline)
    expected = captum_attr.DeepLift(net).attribute(x.clone().requires_grad_(True), target=target,
                                                   baselines=baseline).detach()
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
