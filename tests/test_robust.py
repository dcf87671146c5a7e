"""geomexpl.robust: the Hutchinson Hessian-norm and gradient-alignment penalties against dense oracles,
their parameter gradients, curvature-lowering fine-tuning, misuse, the cache and the command line."""
import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomexpl import cli, data, robust
from geomexpl.geometry import gradient, hessian, logit, principal_curvatures
from geomexpl.nets import SoftplusTwin, softplus_twin, weights
from geomexpl.robust import finetune, gradient_alignment_penalty, hessian_norm_penalty


def smooth_mlp(d, width, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Softplus(beta=2.0), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, classes)).double()


def relu_mlp(d=6, width=8, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, classes)).double()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def dense_frobenius_and_variance(net, x, y):
    """||H||_F^2 per example and the variance of one Rademacher probe's ||H v||^2 = v^T A v, A = H^2:
    2 (||A||_F^2 - sum_i A_ii^2) (Hutchinson 1990)."""
    h = hessian(logit(net, y), x)
    a = h @ h
    frob = a.diagonal(dim1=1, dim2=2).sum(-1)
    variance = 2 * (a.pow(2).sum((1, 2)) - a.diagonal(dim1=1, dim2=2).pow(2).sum(-1))
    return frob, variance


# --- the Hessian-norm estimator --------------------------------------------------------------------

@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(6, 10), width=st.integers(4, 12))
def test_hutchinson_is_unbiased_against_the_dense_hessian(seed, d, width):
    net = smooth_mlp(d, width, seed=seed)
    torch.manual_seed(seed + 1)
    x = torch.randn(4, d, dtype=torch.float64)
    y = torch.randint(0, 3, (4,))  # mixed classes: the probe tiling must keep each example's own class
    frob, variance = dense_frobenius_and_variance(net, x, y)
    assert (frob > 0).all()
    n = 2000  # vectorised: one call stacks all probes; 5 standard errors of the mean
    many = hessian_norm_penalty(net, x, y, probes=n, generator=gen(seed)).detach()
    assert ((many - frob).abs() <= 5 * (variance / n).sqrt() + 1e-9 * frob).all(), (many, frob)
    m = 300  # one probe per call, a fresh seed each: the mean over seeds
    single = torch.stack([hessian_norm_penalty(net, x, y, probes=1, generator=gen(seed * 1000 + s)).detach()
                          for s in range(m)])
    assert ((single.mean(0) - frob).abs() <= 5 * (variance / m).sqrt() + 1e-9 * frob).all()
    assert single.std(0).max() > 0  # really random per seed


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    """Rademacher probes, not Gaussian: v^T A v = tr A exactly when A = H^2 is diagonal."""

    class Separable(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=torch.float64))

        def forward(self, x):
            return torch.stack([(self.w * torch.tanh(x)).sum(1), x.sum(1)], dim=1)

    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    frob, _ = dense_frobenius_and_variance(Separable(), x, y)
    one = hessian_norm_penalty(Separable(), x, y, probes=1, generator=gen(0))
    torch.testing.assert_close(one.detach(), frob, rtol=1e-12, atol=1e-14)


def test_finite_differences_converge_linearly_to_the_exact_estimate():
    net = smooth_mlp(8, 10, seed=3)
    x = torch.randn(5, 8, dtype=torch.float64, generator=gen(1))
    y = torch.tensor([0, 1, 2, 1, 0])
    exact = hessian_norm_penalty(net, x, y, probes=8, method="exact", generator=gen(7)).detach()
    errors = [(hessian_norm_penalty(net, x, y, probes=8, method="fd", h=h, generator=gen(7)).detach()
               - exact).abs().max().item() / exact.max().item() for h in (1e-1, 1e-2, 1e-3)]
    assert errors[2] < 1e-3
    for coarse, fine in zip(errors, errors[1:]):
        assert 5 < coarse / fine < 20, errors  # forward differences: error O(h)


def test_exact_penalty_of_a_softplus_twin_matches_its_dense_hessian():
    net = relu_mlp()
    twin = softplus_twin(net, 3.0)
    x = torch.randn(3, 6, dtype=torch.float64, generator=gen(2))
    y = torch.tensor([2, 0, 1])
    frob, variance = dense_frobenius_and_variance(twin, x, y)
    est = hessian_norm_penalty(twin, x, y, probes=2000, generator=gen(5)).detach()
    assert ((est - frob).abs() <= 5 * (variance / 2000).sqrt() + 1e-9 * frob).all()


# --- gradient alignment ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["l2", "cosine", "both"])
def test_alignment_matches_a_hand_computation(kind):
    net = relu_mlp(seed=4)
    x = torch.rand(5, 6, dtype=torch.float64, generator=gen(3))
    y = torch.tensor([0, 1, 2, 0, 1])
    radius, bounds = 0.2, (0.0, 1.0)
    got = gradient_alignment_penalty(net, x, y, radius=radius, kind=kind, bounds=bounds, generator=gen(9))
    u = torch.rand(x.shape, generator=gen(9), dtype=torch.float64)
    near = (x + radius * (2 * u - 1)).clamp(0, 1)
    a, b = gradient(logit(net, y), x), gradient(logit(net, y), near)
    l2 = (a - b).pow(2).sum(1)
    cos = 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    want = {"l2": l2, "cosine": cos, "both": l2 + cos}[kind]
    torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)


def test_alignment_is_zero_for_a_linear_model_and_positive_for_a_curved_one():
    x = torch.rand(4, 6, dtype=torch.float64, generator=gen(0))
    y = torch.tensor([0, 1, 2, 0])
    linear = nn.Linear(6, 3).double()
    assert gradient_alignment_penalty(linear, x, y, radius=0.3).abs().max() < 1e-12
    assert (gradient_alignment_penalty(smooth_mlp(6, 8), x, y, radius=0.3) > 0).all()


# --- differentiability in the parameters -----------------------------------------------------------

PENALTIES = {
    "exact": lambda net, x, y: hessian_norm_penalty(net, x, y, probes=3, method="exact", generator=gen(1)),
    "fd": lambda net, x, y: hessian_norm_penalty(net, x, y, probes=3, method="fd", h=1e-3, generator=gen(1)),
    "alignment": lambda net, x, y: gradient_alignment_penalty(net, x, y, radius=0.1, generator=gen(1)),
}


class WithParameters(nn.Module):
    """``net`` evaluated with the parameters ``params`` (tensors that may carry a graph)."""

    def __init__(self, net, params):
        super().__init__()
        self.net, self.params = net, params

    def forward(self, z):
        return torch.func.functional_call(self.net, self.params, (z,))


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_penalties_are_differentiable_in_the_parameters(name):
    net = smooth_mlp(4, 5, classes=2, seed=1)
    x = torch.randn(3, 4, dtype=torch.float64, generator=gen(4))
    y = torch.tensor([0, 1, 1])
    weight = net[0].weight.detach().clone().requires_grad_(True)

    def penalty(w):
        params = {**dict(net.named_parameters()), "0.weight": w}
        return PENALTIES[name](WithParameters(net, params), x, y)

    (grad,) = torch.autograd.grad(penalty(weight).sum(), weight)
    assert torch.isfinite(grad).all() and grad.abs().max() > 1e-8
    assert torch.autograd.gradcheck(penalty, (weight,), eps=1e-6, atol=1e-5)  # and correct, not just present


def test_fd_penalty_trains_a_relu_net():
    net = relu_mlp(seed=2).float()
    x = torch.rand(16, 6, generator=gen(0))
    y = torch.randint(0, 3, (16,), generator=gen(1))
    pen = hessian_norm_penalty(net, x, y, probes=4, method="fd", h=0.1, generator=gen(2)).mean()
    pen.backward()
    grads = [p.grad for p in net[:3].parameters()]
    assert pen > 0 and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert max(g.abs().max() for g in grads) > 0


# --- fine-tuning lowers curvature ------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits8():
    """A small ReLU MLP trained (seconds) on the 8x8 digits, and 64 test digits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 10))
    weights.train(model, "digits", epochs=60, size=8, progress=False)
    x, y = data.load("digits", "test", 8)
    return model.requires_grad_(False), x[:64], y[:64]


def curvature_and_hessian(model, x, y, beta=5.0):
    twin = softplus_twin(model, beta)
    kappa, _ = principal_curvatures(logit(twin, y), x, k=1, method="dense")
    frob = hessian_norm_penalty(twin, x, y, probes=32, generator=gen(0))
    return kappa.abs().median().item(), frob.median().item()


def test_hessian_penalty_lowers_curvature_against_plain_training(digits8):
    model, x, y = digits8
    common = dict(epochs=5, size=8, lr=1e-3, seed=0, progress=False)
    plain, plain_meta = finetune(model, "digits", "plain", 0, **common)
    smooth, meta = finetune(model, "digits", "hessian", 0.01, **common)
    kappa_plain, frob_plain = curvature_and_hessian(plain, x, y)
    kappa, frob = curvature_and_hessian(smooth, x, y)
    assert frob < 0.5 * frob_plain  # ||H||_F^2 of the beta=5 twin: about 5x lower
    assert kappa < 0.95 * kappa_plain  # the scale-free curvature falls far less (about 10%)
    assert meta["penalty"] > 0 and plain_meta["penalty"] is None
    assert meta["test_accuracy"] > 0.3  # still a classifier


def bn_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(256, 10)).eval().requires_grad_(False)


@pytest.mark.parametrize("defence", ["hessian", "alignment"])
def test_strength_zero_equals_plain_including_batch_norm_statistics(defence):
    """Same batches, shifts and dropout masks; the penalty's eval-mode forwards leave the running
    statistics alone. So any gap between a defence and plain comes from the penalty itself."""
    model = bn_cnn()
    common = dict(epochs=1, size=8, seed=3, progress=False)
    plain, _ = finetune(model, "digits", "plain", 0, **common)
    zero, meta = finetune(model, "digits", defence, 0.0, **common)
    some, _ = finetune(model, "digits", defence, 1e-2, **common)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, zero.state_dict()[key]), key
    assert meta["penalty"] > 0
    assert not torch.equal(plain[0].weight, some[0].weight)


@pytest.mark.parametrize("defence,strength", [("plain", 0), ("alignment", 1e-2), ("weight_decay", 1e-3)])
def test_fine_tuning_keeps_the_batch_norm_statistics_it_starts_from(defence, strength):
    """The cross-entropy and the penalty see one function (running statistics): fine-tuning with batch
    statistics in one and running ones in the other wrecked the deployed model's accuracy."""
    model = bn_cnn()
    with torch.no_grad():  # running statistics unlike any batch's, so batch-statistics training would move them
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    tuned, _ = finetune(model, "digits", defence, strength, epochs=1, size=8, seed=0, progress=False)
    torch.testing.assert_close(tuned[1].running_mean, model[1].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(tuned[1].running_var, model[1].running_var, rtol=0, atol=0)
    assert not torch.equal(tuned[0].weight, model[0].weight)  # the weights did train


# --- misuse and guarantees -------------------------------------------------------------------------

def test_misuse_gives_clear_errors():
    net, x, y = relu_mlp(), torch.rand(3, 6, dtype=torch.float64), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="unknown defence 'dropout'"):
        finetune(net, "digits", "dropout", 1.0)
    with pytest.raises(ValueError, match="strength must be finite and >= 0"):
        finetune(net, "digits", "hessian", -0.1)
    with pytest.raises(ValueError, match="strength must be a number"):
        finetune(net, "digits", "hessian", float("nan"))
    with pytest.raises(ValueError, match="plain defence has no strength"):
        finetune(net, "digits", "plain", 1.0)
    with pytest.raises(ValueError, match="beta and must be > 0"):
        finetune(net, "digits", "softplus", 0.0)
    with pytest.raises(ValueError, match=r"2 ReLU\(s\).*softplus_twin.*method='fd'"):
        hessian_norm_penalty(net, x, y, method="exact")
    with pytest.raises(ValueError, match="method must be one of"):
        hessian_norm_penalty(net, x, y, method="central")
    with pytest.raises(ValueError, match="probes must be an integer >= 1"):
        hessian_norm_penalty(net, x, y, probes=0, method="fd")
    with pytest.raises(ValueError, match="step h must be"):
        hessian_norm_penalty(net, x, y, method="fd", h=0.0)
    with pytest.raises(ValueError, match=r"y must be a \[B\] = \[3\] integer tensor"):
        hessian_norm_penalty(net, x, y[:2], method="fd")
    with pytest.raises(ValueError, match="contains NaN"):
        gradient_alignment_penalty(net, x.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="kind must be one of"):
        gradient_alignment_penalty(net, x, y, kind="angle")
    with pytest.raises(ValueError, match="radius must be"):
        gradient_alignment_penalty(net, x, y, radius=-1.0)
    with pytest.raises(ValueError, match="eval mode"):
        hessian_norm_penalty(bn_cnn().train(), torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), method="fd")


def test_exact_hessian_defence_refuses_a_relu_net_before_training():
    with pytest.raises(ValueError, match="softplus_twin.*method='fd'"):
        finetune(bn_cnn(), "digits", "hessian", 0.1, hessian_method="exact", size=8, progress=False)


def test_finetune_leaves_the_input_model_untouched_and_returns_it_frozen():
    model = bn_cnn()
    before = copy.deepcopy(model.state_dict())
    out, meta = finetune(model, "digits", "alignment", 0.1, epochs=1, size=8, progress=False)
    assert out is not model and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in model.parameters())
    assert not out.training and not any(p.requires_grad for p in out.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(out.parameters(), model.parameters()))
    assert set(meta) >= {"defence", "strength", "epochs", "seed", "train_seconds", "test_accuracy", "penalty",
                         "torch", "device"}


def test_softplus_defence_returns_a_smooth_twin():
    model = bn_cnn()
    twin, meta = finetune(model, "digits", "softplus", 4.0, epochs=1, size=8, progress=False)
    assert isinstance(twin, SoftplusTwin) and twin.beta == 4.0 and meta["beta"] == 4.0
    assert twin.model is not model
    x, y = data.load("digits", "test", 8)
    pen = hessian_norm_penalty(twin, x[:4], y[:4], method="exact", generator=gen(0))  # accepted: smooth
    assert (pen > 0).all()
    kappa, _ = principal_curvatures(logit(twin, y[:4]), x[:4], k=1, method="dense")
    assert torch.isfinite(kappa).all()


def test_finetune_accepts_tensors_and_any_classifier():
    x = torch.randn(96, 5, generator=gen(0))
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    out, meta = finetune(model, (x, y), "hessian", 0.1, epochs=2, test=(x, y), progress=False, lr=1e-2)
    assert 0 <= meta["test_accuracy"] <= 1 and meta["dataset"] is None
    with pytest.raises(ValueError, match="labels must be a \\[96\\] integer tensor"):
        finetune(model, (x, y.float()), "plain", 0, progress=False)


# --- cache and command line ------------------------------------------------------------------------

def test_cache_round_trip_gives_the_same_logits(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMEXPL_CACHE", str(tmp_path))
    model, meta = robust.robust_pretrained("mlp", "digits", "softplus", 5.0, epochs=1, progress=False)
    path = robust.robust_path("mlp", "digits", "softplus", 5.0, 0)
    assert path.is_file() and path.is_relative_to(tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached weights should have been loaded")

    monkeypatch.setattr(robust.training, "finetune", no_training)
    loaded, loaded_meta = robust.robust_pretrained("mlp", "digits", "softplus", 5.0, epochs=1, progress=False)
    assert isinstance(loaded, SoftplusTwin) and loaded.beta == 5.0 and loaded_meta == meta
    x = data.load("digits", "test")[0][:8]
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(AssertionError, match="should have been loaded"):  # other options: fine-tuned again
        robust.robust_pretrained("mlp", "digits", "softplus", 5.0, epochs=2, progress=False)
    path.write_bytes(b"not a weight file")
    with pytest.raises(AssertionError, match="should have been loaded"):  # unusable file: replaced
        robust.robust_pretrained("mlp", "digits", "softplus", 5.0, epochs=1, progress=False)


def test_cli_fine_tunes_and_prints_metadata(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEOMEXPL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "weights"
    argv = ["robust", "--arch", "mlp", "--defence", "hessian", "--strength", "0.01", "--epochs", "1",
            "--device", "cpu", "--out", str(out)]
    assert cli.main(argv) == 0
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert meta["defence"] == "hessian" and meta["strength"] == 0.01 and meta["epochs"] == 1
    assert meta["test_accuracy"] > 0.5 and meta["penalty"] > 0
    assert [p.name for p in out.iterdir()] == ["mlp-digits-32-hessian-0.01-s0.pt"]
    assert meta["weights"] == str(out / "mlp-digits-32-hessian-0.01-s0.pt")


@pytest.mark.parametrize("extra, message", [
    (["--defence", "hessian"], "--strength is required"),
    (["--defence", "plain", "--strength", "1"], "plain defence has no strength"),
    (["--defence", "alignment", "--strength", "-2"], "strength must be finite and >= 0"),
    (["--defence", "softplus", "--strength", "1", "--epochs", "0"], "--epochs must be >= 1"),
])
def test_cli_validates_before_doing_work(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv("GEOMEXPL_CACHE", str(tmp_path))
    monkeypatch.setattr(robust.training, "finetune", lambda *a, **k: pytest.fail("trained despite bad input"))
    assert cli.main(["robust", "--arch", "mlp", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
