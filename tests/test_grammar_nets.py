"""Random networks from a grammar, through the twin, the engine, captum and finite differences.

The grammar: conv (+ batch norm), residual add, channel concatenation, max/avg pooling, then a
flatten/view, a dense layer and the logits; every activation is one of the ReLU spellings the twin
and the engine must recognise, in-place ones (result used or discarded) included. Kinked
spellings are drawn separately: each must be refused with its name by the twin and the engine.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomexpl.explain import explain, propagate, relevance_map
from geomexpl.explain.graph import UnsupportedLayerError
from geomexpl.geometry import logit, principal_curvatures
from geomexpl.nets import UnsupportedActivationError, softplus_twin

captum_attr = pytest.importorskip("captum.attr")


def _inplace_discarded(z):
    z.relu_()
    return z


def _functional_inplace_discarded(z):
    F.relu(z, inplace=True)
    return z


def _clamp_inplace_discarded(z):
    z.clamp_(min=0)
    return z


RELU_SPELLINGS = {
    "F.relu": F.relu, "torch.relu": torch.relu, "Tensor.relu": lambda z: z.relu(),
    "relu_ (used)": lambda z: z.relu_(), "relu_ (discarded)": _inplace_discarded,
    "F.relu inplace (discarded)": _functional_inplace_discarded, "clamp(min=0)": lambda z: z.clamp(min=0),
    "torch.clamp(z, 0)": lambda z: torch.clamp(z, 0), "clamp_min(0)": lambda z: torch.clamp_min(z, 0),
    "clamp_ (discarded)": _clamp_inplace_discarded, "maximum(z, 0)": lambda z: torch.maximum(z, torch.zeros_like(z)),
    "where(z > 0, z, 0)": lambda z: torch.where(z > 0, z, 0.0), "where(z <= 0, 0, z)": lambda z: torch.where(z <= 0, 0.0, z),
    "F.threshold(z, 0, 0)": lambda z: F.threshold(z, 0.0, 0.0),
    "nn.ReLU": "module", "nn.ReLU(inplace=True)": "module", "nn.Threshold(0, 0)": "module",
}
MODULES = {"nn.ReLU": nn.ReLU, "nn.ReLU(inplace=True)": lambda: nn.ReLU(inplace=True),
           "nn.Threshold(0, 0)": lambda: nn.Threshold(0.0, 0.0)}
KINKS = {  # spelling -> the name the error must carry
    "abs": (lambda z: z.abs(), "Tensor.abs"), "leaky_relu": (lambda z: F.leaky_relu(z), "F.leaky_relu"),
    "relu6": (lambda z: F.relu6(z), "relu6"), "hardtanh": (lambda z: F.hardtanh(z), "F.hardtanh"),
    "clamp(min=0.5)": (lambda z: z.clamp(min=0.5), r"Tensor.clamp\(min=0.5"),
    "clamp(0, 1)": (lambda z: torch.clamp(z, 0, 1), r"torch.clamp\(min=0, max=1"),
    "where(z > 1, z, 0)": (lambda z: torch.where(z > 1, z, 0.0), "torch.where"),
    "maximum(z, z)": (lambda z: torch.maximum(z, z), "torch.maximum"),
    "threshold(z, 0.5, 0)": (lambda z: F.threshold(z, 0.5, 0.0), r"F.threshold\(threshold=0.5"),
    "nn.LeakyReLU": ("module", "nn.LeakyReLU"), "nn.Hardtanh": ("module", "nn.Hardtanh"),
}
KINK_MODULES = {"nn.LeakyReLU": nn.LeakyReLU, "nn.Hardtanh": nn.Hardtanh}


class GrammarNet(nn.Module):
    """blocks (each: conv/bn, residual, concat, max/avg pool) -> flatten spelling -> dense -> logits."""

    def __init__(self, blocks, acts, flatten, channels=2, size=6, classes=3, kinks=None):
        super().__init__()
        self.blocks, self.acts, self.flatten_kind = blocks, acts, flatten
        self.spellings = {**RELU_SPELLINGS, **{k: f for k, (f, _) in (kinks or {}).items()}}
        self.layers = nn.ModuleList()
        self.act_modules = nn.ModuleDict()
        c, s = channels, size
        for i, (block, act) in enumerate(zip(blocks, acts)):
            maker = MODULES.get(act) or KINK_MODULES.get(act)
            if maker is not None:
                self.act_modules[str(i)] = maker()
            if block in ("conv", "conv_bn"):
                self.layers.append(nn.Sequential(nn.Conv2d(c, 3, 3, padding=1),
                                                 *([nn.BatchNorm2d(3)] if block == "conv_bn" else [])))
                c = 3
            elif block == "residual":
                self.layers.append(nn.Conv2d(c, c, 3, padding=1))
            elif block == "concat":
                self.layers.append(nn.Conv2d(c, 2, 3, padding=1))
                c += 2
            else:  # pooling
                self.layers.append(nn.MaxPool2d(2) if block == "maxpool" else nn.AvgPool2d(2))
                s //= 2
        self.fc1 = nn.Linear(c * s * s, 5)
        self.fc_act = nn.ReLU()
        self.fc2 = nn.Linear(5, classes)

    def act(self, i, z):
        if str(i) in self.act_modules:
            return self.act_modules[str(i)](z)
        return self.spellings[self.acts[i]](z)

    def forward(self, x):
        for i, (block, layer) in enumerate(zip(self.blocks, self.layers)):
            if block in ("conv", "conv_bn"):
                x = self.act(i, layer(x))
            elif block == "residual":
                x = self.act(i, layer(x) + x)
            elif block == "concat":
                x = torch.cat([x, self.act(i, layer(x))], dim=1)
            else:
                x = layer(x)
        if self.flatten_kind == "view":
            x = x.view(x.size(0), -1)
        elif self.flatten_kind == "flatten":
            x = torch.flatten(x, 1)
        else:
            x = x.reshape(x.shape[0], -1)
        return self.fc2(self.fc_act(self.fc1(x)))


@st.composite
def grammar_nets(draw, kinks=False):
    n = draw(st.integers(1, 4))
    blocks = draw(st.lists(st.sampled_from(["conv", "conv_bn", "residual", "concat", "maxpool", "avgpool"]),
                           min_size=n, max_size=n))
    pools = [i for i, b in enumerate(blocks) if b.endswith("pool")]
    for i in pools[1:]:  # 6x6 input: one pooling at most
        blocks[i] = "conv"
    if blocks[0].endswith("pool"):  # at least one activation before the dense layers
        blocks.insert(0, "conv")
    names = sorted(KINKS) if kinks else sorted(RELU_SPELLINGS)
    acts = [draw(st.sampled_from(names)) for _ in blocks]
    flatten = draw(st.sampled_from(["view", "flatten", "reshape"]))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    net = GrammarNet(blocks, acts, flatten, kinks=KINKS if kinks else None).double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return net.eval(), x


SETTINGS = settings(max_examples=12, deadline=None)


@SETTINGS
@given(case=grammar_nets())
def test_twin_matches_the_model_at_large_beta_and_is_curved_at_beta_one(case):
    net, x = case
    y = net(x.clone())
    torch.testing.assert_close(softplus_twin(net, 1e4)(x.clone()), y, rtol=1e-2, atol=1e-2 * float(y.detach().abs().max()))
    kappa, _ = principal_curvatures(logit(softplus_twin(net, 1.0), 0), x, k=2, method="dense")
    assert bool((kappa.abs().amax(1) > 1e-6).all()), kappa


@SETTINGS
@given(case=grammar_nets())
def test_gradient_and_lrp_epsilon_match_captum(case):
    net, x = case
    target = net(x).argmax(1)
    saliency = captum_attr.Saliency(net).attribute(x.clone().requires_grad_(True), target=target, abs=False)
    engine_gradient = propagate(net, x, "gradient", target)[0]
    torch.testing.assert_close(engine_gradient, saliency, rtol=1e-9, atol=1e-12)
    # LRP-epsilon with eps -> 0 is gradient x input on ReLU nets (Ancona et al. 2018)
    x_grad = captum_attr.InputXGradient(net).attribute(x.clone().requires_grad_(True), target=target)
    torch.testing.assert_close(explain(net, x, "lrp_epsilon", target, epsilon=1e-13), x_grad,
                               rtol=1e-6, atol=1e-6 * float(x_grad.detach().abs().max()))
    # under the twin the engine's ReLU rule is the softplus derivative: autograd of the twin
    twin = softplus_twin(net, 3.0)
    xg = x.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(twin(xg).gather(1, target[:, None]).sum(), xg)
    torch.testing.assert_close(propagate(twin, x, "gradient", target)[0], autograd, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(case=grammar_nets(), method=st.sampled_from(["gradient", "lrp", "guided_backprop"]))
def test_attack_loss_gradient_matches_finite_differences(case, method):
    net, x = case
    twin = softplus_twin(net, 2.0)
    target = net(x).argmax(1)
    goal = torch.rand(x.shape[0], *x.shape[2:], dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    goal = goal / goal.flatten(1).sum(1).view(-1, 1, 1)
    x0 = net(x).detach()

    def loss(z):
        h = explain(twin, z, method, target, bounds=(-1.0, 2.0))
        out = twin(z)
        return (relevance_map(h) - goal).pow(2).sum() + 0.1 * (out - x0).pow(2).sum()

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(xg), xg)
    v = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    eps = 1e-6
    with torch.no_grad():
        fd = (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)
    torch.testing.assert_close((grad * v).sum(), fd, rtol=1e-4, atol=1e-8)


@SETTINGS
@given(case=grammar_nets(kinks=True))
def test_every_kinked_spelling_is_refused_with_its_name(case):
    net, x = case
    names = "|".join(KINKS[act][1] for act in net.acts)
    with pytest.raises(UnsupportedActivationError, match=names):
        softplus_twin(net, 1.0)(x)
    with pytest.raises(UnsupportedLayerError, match=names):
        propagate(net, x, "lrp_epsilon")
