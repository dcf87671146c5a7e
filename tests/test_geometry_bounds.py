"""Theorem 1's constants: |H|_F <= beta C~ (supplement eq. (9)-(10)) on random softplus networks."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomexpl.geometry import check_hessian_bound, curvature_constant, gradient, hessian, logit, min_gradient_norm
from geomexpl.geometry.operator_norms import weight_norms
from geomexpl.nets import softplus_twin

SETTINGS = settings(deadline=None, max_examples=12)


def mlp(widths: list[int], beta: float, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Softplus(beta))
    return nn.Sequential(*layers).double()


@SETTINGS
@given(widths=st.lists(st.integers(1, 10), min_size=3, max_size=5), beta=st.floats(0.1, 30.0),
       scale=st.floats(0.3, 3.0), seed=st.integers(0, 2**16))
def test_hessian_frobenius_norm_is_bounded_by_beta_times_c_tilde(widths, beta, scale, seed):
    net = mlp(widths, beta, seed)
    x = scale * torch.randn(16, widths[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    frobenius, spectral = curvature_constant(net), curvature_constant(net, norm="spectral")
    assert 0 < spectral <= frobenius * (1 + 1e-12)
    for out in range(widths[-1]):
        check = check_hessian_bound(logit(net, out), x, beta, spectral)
        assert check.exact and check.holds.all(), (check.hessian_norm.max(), check.bound)


def test_a_too_small_constant_is_reported_as_violated():
    net = mlp([6, 8, 8, 2], 5.0, 0)
    f, x = logit(net, 0), torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    norms = hessian(f, x).flatten(1).norm(dim=1)
    check = check_hessian_bound(f, x, 5.0, 0.5 * float(norms.max()) / 5.0)
    assert not check.holds.all()
    torch.testing.assert_close(check.hessian_norm, norms)
    inexact = check_hessian_bound(f, x, 5.0, 0.5 * float(norms.max()) / 5.0, max_dense_dim=2, k=5)
    assert not inexact.exact and not inexact.holds.all()             # the Lanczos lower bound also catches it
    assert (inexact.hessian_norm <= norms * (1 + 1e-9)).all()


@given(w1=st.floats(-3, 3).filter(lambda v: abs(v) > 1e-3), w2=st.floats(-3, 3).filter(lambda v: abs(v) > 1e-3),
       beta=st.floats(0.1, 50.0))
@settings(deadline=None, max_examples=20)
def test_bound_is_attained_up_to_the_factor_four_by_one_neuron(w1, w2, beta):
    """f(x) = w2 sp_beta(w1 x): f'' = w2 w1^2 beta sp''(0) = beta C~ / 4 at x = 0, C~ = |w2| w1^2 (eq. (10))."""
    net = mlp([1, 1, 1], beta, 0)
    with torch.no_grad():
        net[0].weight.fill_(w1), net[0].bias.zero_(), net[2].weight.fill_(w2)
    constant = curvature_constant(net)
    assert constant == pytest.approx(abs(w2) * w1 ** 2, rel=1e-12)
    h = check_hessian_bound(logit(net, 0), torch.zeros(1, 1, dtype=torch.float64), beta, constant).hessian_norm
    assert float(h) == pytest.approx(beta * constant / 4, rel=1e-9)


def test_eq10_products_for_three_layers():
    """C~ = |W3| |W2|^2 |W1|^2 + |W3| |W2| |W1|^2 for W1 -> sp -> W2 -> sp -> W3 (Frobenius norms)."""
    net = mlp([4, 5, 3, 2], 2.0, 1)
    n1, n2, n3 = (float(net[i].weight.detach().norm()) for i in (0, 2, 4))
    assert curvature_constant(net) == pytest.approx(n3 * n2 ** 2 * n1 ** 2 + n3 * n2 * n1 ** 2, rel=1e-12)


@pytest.mark.parametrize("c_in,c_out,kernel,stride,padding,dilation,groups,size", [
    (2, 3, 3, 1, 1, 1, 1, 6), (2, 4, 3, 2, 1, 1, 2, 7), (1, 2, 5, 1, 2, 2, 1, 8), (3, 3, 3, 1, "same", 1, 3, 5),
    (2, 2, 2, 2, 0, 1, 1, 6)])
def test_conv_norms_against_the_unrolled_matrix(c_in, c_out, kernel, stride, padding, dilation, groups, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     bias=False).double()
    x_in = torch.zeros(1, c_in, size, size, dtype=torch.float64)
    matrix = torch.autograd.functional.jacobian(lambda z: conv(z.view_as(x_in)).flatten(), x_in.flatten())
    fro, spec = weight_norms(conv.weight.detach(), conv, x_in)
    assert fro == pytest.approx(float(matrix.norm()), rel=1e-12)                  # exact
    assert float(torch.linalg.matrix_norm(matrix, 2)) <= spec * (1 + 1e-12) <= fro * (1 + 1e-12)


def conv_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2), net[1].running_var.uniform_(0.3, 2), net[1].running_mean.normal_()
    return net.eval()


@pytest.mark.parametrize("norm", ["frobenius", "spectral"])
def test_conv_batchnorm_twin_obeys_the_bound(norm):
    beta, net = 4.0, conv_net(0)
    twin = softplus_twin(net, beta)
    constant = curvature_constant(twin, (1, 6, 6), norm=norm)
    x = torch.randn(12, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for out in range(3):
        assert check_hessian_bound(logit(twin, out), x, beta, constant).holds.all()
    folded = conv_net(0)                               # BatchNorm folded by hand into the conv before it
    scale = net[1].weight / torch.sqrt(net[1].running_var + net[1].eps)
    with torch.no_grad():
        folded[0].weight.mul_(scale.view(-1, 1, 1, 1))
    folded[1] = nn.Identity()
    assert curvature_constant(softplus_twin(folded, beta), (1, 6, 6), norm=norm) == pytest.approx(constant, rel=1e-12)


def test_min_gradient_norm_along_a_path():
    net = mlp([3, 6, 2], 2.0, 0)
    f = logit(net, 1)
    path = torch.randn(5, 4, 3, dtype=torch.float64)
    expected = torch.stack([gradient(f, p).norm(dim=1) for p in path]).amin(0)
    torch.testing.assert_close(min_gradient_norm(f, path), expected)


def test_unsupported_models_are_refused_by_name():
    with pytest.raises(ValueError, match="'2' is ReLU"):
        curvature_constant(conv_net(0), (1, 6, 6))
    with pytest.raises(ValueError, match="MaxPool2d"):
        curvature_constant(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softplus(), nn.MaxPool2d(2)), (1, 6, 6))
    with pytest.raises(ValueError, match="eval mode"):
        curvature_constant(softplus_twin(conv_net(0).train(), 2.0), (1, 6, 6))
    with pytest.raises(ValueError, match="input_shape"):
        curvature_constant(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softplus()))

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(3, 3), nn.Softplus(), nn.Linear(3, 3)

        def forward(self, x):
            return self.b(self.act(self.a(x)) + x)

    with pytest.raises(ValueError, match="not a plain chain"):
        curvature_constant(Residual())
    with pytest.raises(ValueError, match="norm"):
        curvature_constant(mlp([2, 2, 2], 1.0, 0), norm="nuclear")
    assert math.isclose(curvature_constant(nn.Sequential(nn.Linear(3, 2))), 0.0)   # affine: H = 0
