"""C~ for graphs (residual, concatenation, max-pooling): equals eq. (10) on chains, bounds |H|_2."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomexpl.geometry import curvature_constant, hessian, logit
from geomexpl.nets import softplus_twin
from geomexpl.nets.zoo import BasicBlock, DenseLayer


def _eval(net):
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.5, 0.5)
    return net.double().eval()


def chain(seed):
    torch.manual_seed(seed)
    return _eval(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2),
                               nn.Flatten(), nn.Linear(3 * 3 * 3, 5), nn.ReLU(), nn.Linear(5, 3)))


def graph(seed, kind):
    torch.manual_seed(seed)
    body = {"residual": [BasicBlock(2, 2)], "concat": [DenseLayer(2, 2)],
            "maxpool": [nn.ReLU(), nn.MaxPool2d(2)]}[kind]
    channels = 4 if kind == "concat" else 2
    size = 3 if kind == "maxpool" else 6
    return _eval(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), *body, nn.Flatten(),
                               nn.Linear(channels * size * size, 3)))


def test_graph_bound_equals_eq10_with_spectral_norms_on_chains():
    twin = softplus_twin(chain(0), 2.0)
    from geomexpl.geometry.graph_bound import graph_curvature_constant

    spectral_chain = curvature_constant(twin, (1, 6, 6), norm="spectral")
    assert graph_curvature_constant(twin, (1, 6, 6)) == pytest.approx(spectral_chain, rel=1e-12)
    assert spectral_chain <= curvature_constant(twin, (1, 6, 6), norm="frobenius")


@settings(deadline=None, max_examples=12)
@given(seed=st.integers(0, 1000), kind=st.sampled_from(["residual", "concat", "maxpool"]),
       beta=st.floats(0.5, 20.0))
def test_hessian_spectral_norm_is_bounded_on_graphs(seed, kind, beta):
    """|H g_k|_2 <= beta C~ / 4 (sp'' <= beta/4), checked with the dense Hessian at random points.

    Tolerance 1e-9 relative: both sides are float64 computations of O(1)-O(1e3) numbers."""
    net = graph(seed, kind)
    twin = softplus_twin(net, beta)
    constant = curvature_constant(twin, (1, 6, 6), norm="spectral")
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    for k in range(3):
        h = hessian(logit(twin, torch.full((4,), k)), x)
        norms = torch.linalg.matrix_norm(h, ord=2)
        assert (norms <= beta * constant / 4 * (1 + 1e-9)).all()
        assert (norms > 0).all()


class ResidualNeuron(nn.Module):
    """g(x) = v (relu(w x) + x): the bound is attained at x = 0, where sp'' = beta/4."""

    def __init__(self, w: float, v: float):
        super().__init__()
        self.w, self.v = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
        self.w.weight.data.fill_(w)
        self.v.weight.data.fill_(v)

    def forward(self, x):
        return self.v(torch.relu(self.w(x)) + x)


@pytest.mark.parametrize("w,v,beta", [(2.0, 3.0, 5.0), (-0.5, 1.5, 1.0)])
def test_bound_is_attained_so_a_smaller_constant_fails(w, v, beta):
    """C~ = |v| w^2 and H(0) = v w^2 beta / 4: the bound is tight, and 0.9 C~ is violated at 0."""
    twin = softplus_twin(ResidualNeuron(w, v).double(), beta)
    constant = curvature_constant(twin, (1,), norm="spectral")
    assert constant == pytest.approx(abs(v) * w * w, rel=1e-12)
    h = hessian(logit(twin, 0), torch.zeros(1, 1, dtype=torch.float64)).abs().item()
    assert h == pytest.approx(beta * constant / 4, rel=1e-9)
    assert h > beta * (0.9 * constant) / 4


def test_unsupported_node_is_named():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            return torch.sigmoid(self.lin(x))

    with pytest.raises(ValueError, match="sigmoid"):
        curvature_constant(softplus_twin(Odd(), 1.0), (4,), norm="spectral")
