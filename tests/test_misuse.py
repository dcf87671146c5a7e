"""One test per case of issue 14's "Why": each was silently wrong or ended in a traceback before."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomexpl import nets
from geomexpl.attack import manipulate
from geomexpl.explain import UnsupportedLayerError, explain
from geomexpl.explain.rules import stabilize
from geomexpl.geometry import logit, principal_curvatures
from geomexpl.nets import UnsupportedActivationError, WeightFileError, softplus_twin


class Net(nn.Module):
    """conv -> act -> linear -> act -> linear, with the activations written as ``act``."""

    def __init__(self, act, bias=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.act = act
        self.conv = nn.Conv2d(1, 3, 3, padding=1, bias=bias)
        self.fc1 = nn.Linear(3 * 4 * 4, 6, bias=bias)
        self.fc2 = nn.Linear(6, 3, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.act(self.conv(x)).flatten(1))))


def _net(act, **kw):
    return Net(act, **kw).double().eval()


X = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _discarded_relu_(z):
    z.relu_()
    return z


OTHER_RELUS = {"clamp(min=0)": lambda z: z.clamp(min=0), "clamp_min(z, 0)": lambda z: torch.clamp_min(z, 0),
               "maximum(z, 0)": lambda z: torch.maximum(z, torch.zeros_like(z)),
               "where(z > 0, z, 0)": lambda z: torch.where(z > 0, z, 0.0),
               "threshold(z, 0, 0)": lambda z: F.threshold(z, 0.0, 0.0), "relu_ (discarded)": _discarded_relu_}


@pytest.mark.parametrize("spelling", sorted(OTHER_RELUS))
def test_relu_written_another_way_is_smoothed(spelling):
    net, reference = _net(OTHER_RELUS[spelling]), _net(F.relu)
    torch.testing.assert_close(net(X.clone()), reference(X))
    torch.testing.assert_close(softplus_twin(net, 1.0)(X.clone()), softplus_twin(reference, 1.0)(X))
    assert not torch.allclose(explain(net, X, "gradient", beta=1.0), explain(net, X, "gradient"))
    kappa, _ = principal_curvatures(logit(softplus_twin(net, 1.0), 0), X, k=1, method="dense")
    assert bool((kappa.abs() > 1e-6).all())


@pytest.mark.parametrize("method", ["guided_backprop", "lrp_epsilon", "deeplift", "gradient"])
def test_discarded_inplace_relu_is_a_relu_in_the_engine(method):
    net, reference = _net(_discarded_relu_), _net(F.relu)
    torch.testing.assert_close(explain(net, X, method), explain(reference, X, method))
    torch.testing.assert_close(explain(net, X, method, beta=2.0, **({"epsilon": 0.1} if method == "lrp_epsilon" else {})),
                               explain(reference, X, method, beta=2.0, **({"epsilon": 0.1} if method == "lrp_epsilon" else {})))


def test_discarded_inplace_relu_conserves_lrp_relevance():
    net = _net(_discarded_relu_, bias=False)
    f = net(X.clone())
    target = f.argmax(1)
    h = explain(net, X, "lrp_epsilon", target, epsilon=1e-12)
    torch.testing.assert_close(h.flatten(1).sum(1), f.gather(1, target[:, None]).squeeze(1), rtol=1e-6, atol=1e-9)


SMOOTH = {"nn.Tanh": nn.Tanh(), "torch.tanh": torch.tanh, "nn.Sigmoid": nn.Sigmoid(), "torch.sigmoid": torch.sigmoid,
          "nn.Softplus": nn.Softplus(), "F.softplus": F.softplus, "nn.GELU": nn.GELU(), "F.gelu": F.gelu,
          "nn.SiLU": nn.SiLU(), "F.silu": F.silu}
KINKED = {"abs": (torch.abs, None), "leaky_?relu": (F.leaky_relu, nn.LeakyReLU()),
          "relu6": (F.relu6, nn.ReLU6()), "hardtanh": (F.hardtanh, nn.Hardtanh())}


class Mixed(nn.Module):
    """A ReLU, then the activation under test."""

    def __init__(self, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(4, 4), nn.Linear(4, 2), act

    def forward(self, x):
        return self.fc2(self.act(F.relu(self.fc1(x))))


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_smooth_activations_pass_the_twin_in_module_and_function_form(name):
    net = Mixed(SMOOTH[name]).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(softplus_twin(net, 1e6)(x), net(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(KINKED))
def test_kinked_activations_are_refused_in_module_and_function_form(name):
    function, module = KINKED[name]
    for act in (function, module):
        if act is None:
            continue
        with pytest.raises(UnsupportedActivationError, match=f"(?i)(torch|F|nn)\\.{name}"):
            softplus_twin(Mixed(act).double(), 1.0)(torch.randn(2, 4, dtype=torch.float64))
        with pytest.raises(UnsupportedLayerError, match=f"(?i)(torch|F|nn)\\.{name}"):
            explain(Mixed(act).double(), torch.randn(2, 4, dtype=torch.float64), "lrp_epsilon")


@pytest.mark.parametrize("method", ["torch", "lanczos"])
def test_curvature_of_a_relu_model_is_refused_with_the_fix(method):
    with pytest.raises(ValueError, match=r"computes \d+ ReLU.*softplus_twin"):
        principal_curvatures(logit(_net(F.relu), 0), X, k=2, method=method)


def test_train_mode_is_an_error_everywhere_and_never_switched_silently():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.Linear(32, 3)).double()
    x = X.clone()
    message = r"layer '1' \(BatchNorm2d\) is in training mode.*model.eval\(\)"
    with pytest.raises(ValueError, match=message):
        explain(net, x, "gradient")
    with pytest.raises(ValueError, match=message):
        manipulate(net, x, torch.rand(3, 4, 4, dtype=torch.float64), "gradient", steps=2, progress=False)
    with pytest.raises(ValueError, match=message):
        principal_curvatures(logit(softplus_twin(net, 1.0), 0), x, k=1, method="dense")
    assert all(m.training for m in net.modules())


def test_stabilize_is_exact_in_float64():
    z = torch.tensor([0.0, -1.0, 2.0], dtype=torch.float64)
    assert stabilize(z, 0.1).tolist() == [0.1, -1.1, 2.1]


def test_lrp_epsilon_under_a_twin_is_guarded():
    net = _net(F.relu)
    with pytest.raises(ValueError, match=r"epsilon=1e-07 under a softplus twin.*epsilon >= 0\.1"):
        explain(net, X, "lrp_epsilon", beta=5.0)
    h = explain(net, X, "lrp_epsilon", beta=5.0, epsilon=0.1)
    assert torch.isfinite(h).all() and float(h.abs().max()) < 10 * float(net(X).detach().abs().max())


def test_manipulate_with_a_target_map_that_carries_a_graph():
    net = _net(F.relu)
    source = torch.rand(3, 4, 4, dtype=torch.float64, requires_grad=True)
    target_map = source * 2  # carries a graph
    result = manipulate(net, X.clone(), target_map, "gradient", steps=3, lr=1e-3, progress=False)
    assert torch.isfinite(result.x_adv).all() and source.grad is None


def test_logit_index_out_of_range_is_a_clear_error():
    twin = softplus_twin(_net(F.relu), 1.0)
    with pytest.raises(ValueError, match=r"logit index \[99\] out of range: the model has 3 outputs"):
        logit(twin, 99)(X)


@pytest.mark.parametrize("x, message", [
    (torch.rand(2, 1, 28, 28), r"takes a batch \[B, 1, 32, 32\], got \(2, 1, 28, 28\)"),
    (torch.rand(2, 1, 32, 32, dtype=torch.float64), "float32 weights but the input is torch.float64"),
    (torch.rand(1, 32, 32), r"add the batch dimension"),
])
def test_zoo_nets_check_their_input(x, message):
    with pytest.raises(ValueError, match=message):
        nets.build("vgg").eval()(x)


def test_gelu_net_in_the_attack_names_beta_growth_none():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 3)).double().eval()
    goal = torch.rand(3, 4, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedActivationError, match="beta_growth=None"):
        manipulate(net, X.clone(), goal, "gradient", steps=2, progress=False)
    result = manipulate(net, X.clone(), goal, "gradient", steps=2, beta_growth=None, progress=False)
    assert torch.isfinite(result.x_adv).all()


def test_weight_file_errors_are_short_and_safe(tmp_path):
    model = nets.build("mlp")
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": model.state_dict(), "hook": print}, pickled)
    other = tmp_path / "other.pt"
    torch.save(nets.build("vgg").state_dict(), other)
    for path, expected in ((pickled, "pickled Python objects"), (other, r"missing keys .*\(\d+ more\)")):
        with pytest.raises(WeightFileError, match=expected) as info:
            nets.load_weights(model, path)
        text = str(info.value)
        assert "weights_only" not in text and not re.search(r"\x1b\[", text) and len(text) < 600
