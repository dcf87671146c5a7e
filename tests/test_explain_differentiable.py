"""Every explanation method is an exactly differentiable function of x (docs/design.md, principle 1).

On softplus twins of tiny random float64 CNNs covering every layer type the engine knows (conv,
folded and unfolded batch norm, ReLU modules reused and functional, max / avg / adaptive-avg
pooling, flatten / view, dropout, residual add, channel concatenation), the autograd gradient of
L(x) = sum (relevance_map(h(x)) - T)^2 matches central finite differences along random directions,
and is non-zero. The exception is Deconvnet, whose backward pass omits the ReLU's forward mask: it
depends on x only through max-pool switches, so its derivative is exactly zero (checked as such).
The tiny networks are shared with the other test_explain_* files.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomexpl.explain import METHODS, explain, fit_patterns, relevance_map
from geomexpl.explain.rules import TWIN_EPSILON
from geomexpl.nets import softplus_twin

KINDS = ("seq", "res", "dense")
SHAPE = (2, 8, 8)  # [C, H, W] of the tiny nets' inputs


def seq_net(bias: bool = True) -> nn.Module:
    """Conv + BN (folded), max-pool, conv, avg-pool, flatten, dropout, two dense layers."""
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Dropout(0.5), nn.Linear(24, 8, bias=bias), nn.ReLU(), nn.Linear(8, 3, bias=bias))


class ResNetTiny(nn.Module):
    """A residual block (operator.add), a reused nn.ReLU, F.relu, F.max_pool2d, adaptive avg-pool,
    x.view(x.size(0), -1) and Tensor.relu."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=bias)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(16, 6, bias=bias)
        self.fc2 = nn.Linear(6, 3, bias=bias)

    def forward(self, x):
        x = self.relu(self.stem(x))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = self.relu(x + y)
        x = self.pool(F.max_pool2d(x, 2))
        return self.fc2(self.fc1(x.view(x.size(0), -1)).relu())


class DenseNetTiny(nn.Module):
    """DenseNet-style: torch.cat of a feature map and a new one, pre-activation batch norms that are
    not folded (per-channel affine), torch.relu, F.avg_pool2d, torch.flatten."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.conv0 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(4, 3, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(7)
        self.fc = nn.Linear(7 * 16, 3, bias=bias)

    def forward(self, x):
        x = self.conv0(x)
        x = torch.cat([x, self.conv(self.relu(self.bn(x)))], 1)
        x = torch.relu(self.bn2(x))
        return self.fc(torch.flatten(F.avg_pool2d(x, 2), 1))


def tiny_net(kind: str, seed: int = 0, bias: bool = True) -> nn.Module:
    """A tiny float64 eval-mode net with random batch-norm statistics (bias=False: no bias anywhere,
    batch norms included, so LRP-epsilon conserves relevance)."""
    torch.manual_seed(seed)
    net = {"seq": seq_net, "res": ResNetTiny, "dense": DenseNetTiny}[kind](bias=bias)
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            if bias:
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
                module.bias.data.copy_(0.1 * torch.randn(module.num_features, generator=gen))
            else:
                module.bias.data.zero_()
    return net.double().eval().requires_grad_(False)


def conv_variants_net() -> nn.Module:
    """Strided, dilated, grouped and odd-sized convolutions, reflect padding and padding='same'
    (the latter two use the autograd transpose instead of conv_transpose); no biases, so that
    Deep Taylor's relevance is conserved exactly."""
    torch.manual_seed(0)
    conv = functools.partial(nn.Conv2d, bias=False)
    return nn.Sequential(conv(2, 4, 3, stride=2, padding=1), nn.ReLU(),
                         conv(4, 4, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
                         conv(4, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                         conv(4, 3, 3, padding="same"), nn.ReLU(),
                         conv(3, 3, 2, stride=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                         nn.Flatten(), nn.Linear(3, 2, bias=False)).double().eval()


def tiny_inputs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n,) + SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@functools.lru_cache(maxsize=None)
def tiny_patterns(kind: str):
    return fit_patterns(tiny_net(kind), tiny_inputs(64, seed=1), cache=False)


def method_options(method: str, kind: str) -> dict:
    if method in ("lrp_epsilon", "lrp_cmp"):  # under a twin, epsilon must bound 1 / (z + eps)
        return {"epsilon": TWIN_EPSILON}
    return {"patterns": tiny_patterns(kind)} if method.startswith("pattern") else {}


def assert_matches_finite_differences(loss, x: torch.Tensor, directions: int = 2, h: float = 1e-6,
                                      nonzero: bool = True) -> None:
    """<grad L, v> against (L(x + h v) - L(x - h v)) / 2h along random unit directions v."""
    xg = x.clone().requires_grad_(True)
    value = loss(xg)
    (grad,) = torch.autograd.grad(value, xg, allow_unused=True) if value.requires_grad else (None,)
    grad = torch.zeros_like(x) if grad is None else grad
    assert torch.isfinite(grad).all()
    scale = float(grad.norm())
    assert (scale > 0) == nonzero, f"the gradient of the explanation loss is {scale}"
    gen = torch.Generator().manual_seed(1)
    for _ in range(directions):
        v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        v /= v.norm()
        with torch.no_grad():
            numeric = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
        analytic = (grad * v).sum()
        torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-6 * scale + 1e-12)


def _loss_of(method_call):
    target_map = torch.rand((2,) + SHAPE[1:], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target_map /= target_map.sum((1, 2), keepdim=True)
    return lambda x: ((relevance_map(method_call(x)) - target_map) ** 2).sum()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_explanation_gradient_matches_finite_differences(kind, method):
    twin = softplus_twin(tiny_net(kind), 3.0)
    x = tiny_inputs(2)
    target = twin(x).argmax(1)  # fixed, so the finite differences never switch the explained class
    options = method_options(method, kind)
    assert_matches_finite_differences(_loss_of(lambda t: explain(twin, t, method, target, **options)), x,
                                      nonzero=method != "deconvnet")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["gradient", "lrp", "guided_backprop"])
def test_smoothgrad_and_beta_option_are_differentiable(kind, method):
    net = tiny_net(kind)
    x = tiny_inputs(2)
    target = net(x).argmax(1)

    def smoothgrad(t):  # the same noise at every evaluation: a fixed seed per call
        return explain(net, t, method, target, beta=3.0, smoothgrad=3, noise_level=0.1,
                       generator=torch.Generator().manual_seed(5))
    assert_matches_finite_differences(_loss_of(smoothgrad), x)


@pytest.mark.parametrize("kind", KINDS)
def test_beta_smoothed_gradient_is_differentiable_and_relu_gradient_map_is_not(kind):
    net = tiny_net(kind)
    x = tiny_inputs(2)
    target = net(x).argmax(1)
    assert_matches_finite_differences(_loss_of(lambda t: explain(net, t, "gradient", target, beta=3.0)), x)
    # contrast: on the ReLU net the gradient map is piecewise constant, its derivative is zero
    xg = x.clone().requires_grad_(True)
    h = explain(net, xg, "gradient", target)
    (grad,) = torch.autograd.grad(h.pow(2).sum(), xg)
    assert float(grad.abs().max()) == 0.0


@pytest.mark.parametrize("method", ["lrp", "guided_backprop", "deeplift", "lrp_alpha_beta"])
def test_conv_variants_are_differentiable(method):
    """Strided / dilated / grouped convolutions, and the autograd transpose of reflect and 'same'
    padding, keep the explanation exactly differentiable."""
    twin = softplus_twin(conv_variants_net(), 3.0)
    x = torch.rand(2, 2, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = twin(x).argmax(1)
    target_map = torch.rand(2, 9, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = lambda t: ((relevance_map(explain(twin, t, method, target)) - target_map) ** 2).sum()  # noqa: E731
    assert_matches_finite_differences(loss, x)
