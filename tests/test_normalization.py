"""nets.with_normalization and the engine's elementwise affine layers: LRP conserves relevance
through the normalisation (identity rule) and maps the zB bounds; gradient-like rules apply the
chain rule (checked against autograd); softplus twin, curvature and attack run on a wrapped net."""
import pytest
import torch
from torch import nn

from geomexpl import attack, explain, nets
from geomexpl.explain import UnsupportedLayerError, propagate
from geomexpl.geometry import logit, principal_curvatures

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def small_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(32, 5))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2)
    return net.eval()


def test_wrapper_computes_the_normalised_model_and_checks_its_arguments():
    net = small_net()
    wrapped = nets.with_normalization(net, MEAN, STD)
    x = torch.rand(3, 3, 8, 8)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapped(x), net((x - mean) / std))
    assert not wrapped.training and set(dict(wrapped.named_buffers())) >= {"mean", "std"}
    with pytest.raises(ValueError, match="std must be positive"):
        nets.with_normalization(net, MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="one value per channel"):
        nets.with_normalization(net, MEAN, (0.2, 0.2))


def test_lrp_conserves_relevance_through_the_normalisation_and_maps_the_bounds():
    net = small_net()
    wrapped = nets.with_normalization(net, MEAN, STD)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    wrapped, net = wrapped.double(), net.double()
    h = explain.explain(wrapped, x, "lrp", bounds=(0.0, 1.0))
    logits = wrapped(x)
    torch.testing.assert_close(h.flatten(1).sum(1), logits.max(1).values, rtol=1e-6, atol=0)  # stabiliser 1e-9
    # oracle: the same as LRP of the bare net on normalised inputs with normalised bounds
    mean, std = wrapped.mean, wrapped.std  # the float32 statistics, as the wrapper holds them
    xn = (x - mean) / std
    bounds = (tuple(((0 - mean) / std).flatten().tolist()), tuple(((1 - mean) / std).flatten().tolist()))
    torch.testing.assert_close(h, explain.explain(net, xn, "lrp", bounds=bounds), rtol=1e-9, atol=1e-12)
    unmapped = explain.explain(net, xn, "lrp", bounds=(0.0, 1.0))  # what forgetting the mapping gives
    assert (h - unmapped).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["lrp_epsilon", "lrp_alpha_beta", "deep_taylor", "excitation_backprop"])
def test_every_lrp_rule_passes_relevance_unchanged(method):
    net = small_net().double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    _, plain = propagate(nets.with_normalization(net, MEAN, STD).double(), x, method, record=True,
                         **({"bounds": (0.0, 1.0)} if method == "deep_taylor" else {}))
    names = list(plain)  # reverse order: ..., div, sub, x
    torch.testing.assert_close(plain[names[-1]], plain[names[-3]])


class Affine(nn.Module):
    """Every affine form the engine reads, with a buffer and numbers."""

    def __init__(self):
        super().__init__()
        self.net = small_net(1)
        self.register_buffer("shift", torch.linspace(-0.3, 0.4, 3).view(1, 3, 1, 1))

    def prefix(self, x):
        x = (2.0 - x) * 0.5
        x = torch.sub(x, self.shift) / 0.7
        x = torch.add(x, 0.1).mul(1.3)
        return x.sub(self.shift)

    def forward(self, x):
        return self.net(self.prefix(x))


@pytest.mark.parametrize("method", ["gradient", "guided_backprop", "deeplift"])
def test_gradient_like_rules_apply_the_chain_rule(method):
    model = Affine().double().eval()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    if method == "gradient":  # the engine's plain-gradient rules against autograd
        h, _ = propagate(model, x, "gradient", target=torch.tensor([0, 1, 2]))
        (g,) = torch.autograd.grad(model(x)[torch.arange(3), torch.tensor([0, 1, 2])].sum(), x)
        torch.testing.assert_close(h, g, rtol=1e-10, atol=1e-12)
    elif method == "deeplift":  # multipliers a * m: the contributions of the inner net at reference prefix(0)
        h = explain.explain(model, x, method)
        z, z0 = model.prefix(x).detach(), model.prefix(torch.zeros_like(x[:1])).detach()
        torch.testing.assert_close(h, explain.explain(model.net, z, method, reference=z0), rtol=1e-8, atol=1e-12)
        k = model(x).argmax(1)
        delta = model(x)[torch.arange(3), k] - model(torch.zeros_like(x))[torch.arange(3), k]
        torch.testing.assert_close(h.flatten(1).sum(1), delta, rtol=1e-8, atol=1e-12)
    else:  # the inner net's signal at the prefix's output, times d prefix / dx = -0.5 / 0.7 * 1.3
        h = explain.explain(model, x, method)
        ref = explain.explain(model.net, model.prefix(x).detach(), method) * (-0.5 / 0.7 * 1.3)
        torch.testing.assert_close(h, ref, rtol=1e-8, atol=1e-12)


def test_non_affine_constant_ops_are_refused():
    class Reciprocal(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_net()

        def forward(self, x):
            return self.net(1.0 / (x + 1.0))

    with pytest.raises(UnsupportedLayerError, match="not affine"):
        explain.explain(Reciprocal(), torch.rand(1, 3, 8, 8), "lrp")


def test_twin_curvature_and_attack_on_a_wrapped_net():
    torch.manual_seed(0)
    wrapped = nets.with_normalization(small_net(), MEAN, STD)
    x = torch.rand(2, 3, 8, 8)
    twin = nets.softplus_twin(wrapped, 5.0)
    assert torch.isfinite(twin(x)).all() and not torch.equal(twin(x), wrapped(x))
    kappa, info = principal_curvatures(logit(twin), x, k=1, method="torch", maxiter=20)
    assert kappa.shape == (2, 1) and torch.isfinite(kappa).all()
    target = explain.explain(wrapped, x.flip(0), "lrp")
    result = attack.manipulate(wrapped, x, target.abs().sum(1), "lrp", steps=2)
    assert result.x_adv.shape == x.shape and 0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1
