"""The softplus_beta twin: exact softplus network, shared untouched weights, limit beta -> inf."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomexpl.nets import (UnsupportedActivationError, beta_schedule, softplus_twin, unwrap)


class ModuleRelu(nn.Module):
    def __init__(self, d=5, h=7):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, 3)
        self.a1, self.a2 = nn.ReLU(), nn.ReLU(inplace=True)

    def forward(self, x):
        return self.l3(self.a2(self.l2(self.a1(self.l1(x)))))

    def by_hand(self, x, beta):
        sp = lambda z: torch.log1p(torch.exp(beta * z)) / beta  # noqa: E731
        return self.l3(sp(self.l2(sp(self.l1(x)))))


class ReusedRelu(ModuleRelu):
    def forward(self, x):
        return self.l3(self.a1(self.l2(self.a1(self.l1(x)))))


class FunctionalRelu(ModuleRelu):
    def forward(self, x):
        return self.l3(torch.relu(self.l2(F.relu(self.l1(x))).relu()).relu_())

    def by_hand(self, x, beta):
        sp = lambda z: torch.log1p(torch.exp(beta * z)) / beta  # noqa: E731
        return self.l3(sp(sp(sp(self.l2(sp(self.l1(x)))))))


@pytest.mark.parametrize("cls", [ModuleRelu, ReusedRelu, FunctionalRelu])
@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_twin_equals_hand_written_softplus_net(cls, beta):
    torch.manual_seed(0)
    net = cls().double()
    x = torch.randn(11, 5, dtype=torch.float64)
    torch.testing.assert_close(softplus_twin(net, beta)(x), net.by_hand(x, beta), rtol=1e-12, atol=1e-12)


def test_twin_gradient_is_analytic():
    """d/dx V sp(W x) = W^T (V^T * sigmoid(beta W x)) for a one-hidden-layer net."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1)).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    beta = 2.5
    (grad,) = torch.autograd.grad(softplus_twin(net, beta)(x).sum(), x)
    W, V = net[0].weight, net[2].weight
    expected = (torch.sigmoid(beta * (x @ W.T + net[0].bias)) * V) @ W
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 10_000), width=st.integers(2, 16), beta=st.floats(5.0, 1e3))
def test_twin_tends_to_relu(seed, width, beta):
    """|sp_beta(z) - relu(z)| <= log(2)/beta, so the twin is within L*log(2)/beta of the ReLU net,
    L = sum over layers of the product of the following layers' operator norms (1-Lipschitz relu)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                        nn.Linear(width, 2)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    norms = [torch.linalg.matrix_norm(net[i].weight, 2).item() for i in (2, 4)]
    bound = (norms[0] * norms[1] + norms[1]) * torch.log(torch.tensor(2.0)).item() / beta
    gap = (softplus_twin(net, beta)(x) - net(x)).abs().max().item()
    assert gap <= bound * (1 + 1e-9)
    gap_more = (softplus_twin(net, 4 * beta)(x) - net(x)).abs().max().item()
    assert gap_more <= bound / 4 * (1 + 1e-9)


def test_twin_shares_and_leaves_original_untouched():
    torch.manual_seed(2)
    net = ModuleRelu()
    x = torch.randn(4, 5)
    before_out, before_state = net(x), copy.deepcopy(net.state_dict())
    twin = softplus_twin(net, 1.0)
    assert all(a is b for a, b in zip(twin.parameters(), net.parameters()))
    twin(x).sum().backward()
    assert not torch.allclose(twin(x), before_out)
    torch.testing.assert_close(net(x), before_out, rtol=0, atol=0)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before_state[k], rtol=0, atol=0)
    assert unwrap(twin) == (net, 1.0) and unwrap(net) == (net, None)


@pytest.mark.parametrize("beta", [None, float("inf")])
def test_beta_none_or_inf_is_relu(beta):
    net = ModuleRelu()
    x = torch.randn(4, 5)
    torch.testing.assert_close(softplus_twin(net, beta)(x), net(x), rtol=0, atol=0)


def test_twin_of_twin_uses_new_beta():
    net = ModuleRelu().double()
    x = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(softplus_twin(softplus_twin(net, 1.0), 3.0)(x), net.by_hand(x, 3.0))


@pytest.mark.parametrize("act", [nn.LeakyReLU(), nn.ELU(), nn.ReLU6(), nn.Hardtanh()])
def test_kinked_activation_module_is_named(act):
    net = nn.Sequential(nn.Linear(2, 2), act)
    with pytest.raises(UnsupportedActivationError, match=f"'1' is nn.{type(act).__name__}"):
        softplus_twin(net, 1.0)


def test_a_net_without_relu_names_the_fix():
    class Gelu(nn.Module):
        def forward(self, x):
            return F.gelu(x)

    with pytest.raises(UnsupportedActivationError, match=r"no ReLU \(its non-linearities: gelu\).*beta_growth=None"):
        softplus_twin(Gelu(), 1.0)(torch.randn(2, 2))


def test_invalid_beta():
    with pytest.raises(ValueError, match="beta must be positive"):
        softplus_twin(ModuleRelu(), -1.0)


def test_beta_schedule_is_geometric():
    betas = beta_schedule(10.0, 100.0, 4)
    torch.testing.assert_close(torch.tensor(betas), torch.tensor([10.0, 10 * 10**0.25, 10 * 10**0.5, 10 * 10**0.75]))
    with pytest.raises(ValueError):
        beta_schedule(0.0, 100.0, 10)


def test_counting_relus_leaves_a_training_model_untouched():
    """count_relus runs in eval mode: a model in training mode keeps its batch-norm statistics and its mode."""
    from geomexpl.nets.softplus import count_relus

    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten()).train()
    net[3].eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert count_relus(net, torch.randn(4, 1, 8, 8) * 5 + 3) == 1
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [m.training for m in net.modules()] == [True, True, True, True, False, True]
