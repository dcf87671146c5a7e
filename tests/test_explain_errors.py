"""Bad input to the explanation methods gets a clear error naming the problem."""
from __future__ import annotations

import pytest
import torch
from test_explain_differentiable import tiny_inputs, tiny_net
from torch import nn

from geomexpl.explain import UnsupportedLayerError, explain, fit_patterns, propagate

ENGINE_METHODS = ["lrp", "guided_backprop", "deeplift", "rectgrad"]


def small_net(middle: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), middle, nn.Flatten(), nn.Linear(3 * 64, 3)).double().eval()


@pytest.mark.parametrize("method", ["gradient", "lrp", "pattern_net"])
def test_wrong_rank_and_non_finite_inputs(method):
    net = tiny_net("seq")
    with pytest.raises(ValueError, match="x must have"):
        explain(net, torch.rand(8, dtype=torch.float64), method)
    for bad in (float("nan"), float("inf")):
        x = tiny_inputs(2)
        x[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="x contains (NaN|inf)"):
            explain(net, x, method)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        explain(net, torch.ones(2, *tiny_inputs(1).shape[1:], dtype=torch.long), method)


@pytest.mark.parametrize("method", ["integrated_gradients", "lrp_epsilon", "deeplift"])
def test_target_out_of_range_and_unknown_method(method):
    net, x = tiny_net("res"), tiny_inputs(2)
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 2\]"):
        explain(net, x, method, target=3)
    with pytest.raises(ValueError, match="target must be"):
        explain(net, x, method, target=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="unknown explanation method 'lrp_zz'"):
        explain(net, x, "lrp_zz")
    with pytest.raises(ValueError, match="unknown propagation method 'gradient_x'"):
        propagate(net, x, "gradient_x")


@pytest.mark.parametrize("layer, label", [(nn.GELU(), "GELU"), (nn.LayerNorm([3, 8, 8]), "LayerNorm"),
                                          (nn.Tanh(), "Tanh")])
@pytest.mark.parametrize("method", ENGINE_METHODS)
def test_unsupported_layer_names_layer_and_method(layer, label, method):
    net = small_net(layer)
    with pytest.raises(UnsupportedLayerError, match=rf"method '{method}' .*layer '1' \({label} '1'\)"):
        explain(net, tiny_inputs(2), method)
    explain(net, tiny_inputs(2), "gradient")  # autograd methods need no rules


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(128, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            x = x * 2
        return self.fc(x.flatten(1))


class Shifted(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(128, 3)

    def forward(self, x):
        return self.fc(1.0 / (x.flatten(1) + 1.0))


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(128, 3)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y, y


def test_untraceable_constant_add_and_tuple_outputs_are_explained_errors():
    x = tiny_inputs(2)
    with pytest.raises(UnsupportedLayerError, match="cannot trace Untraceable with torch.fx"):
        propagate(Untraceable().double(), x, "lrp", bounds=(0, 1))
    with pytest.raises(UnsupportedLayerError, match="a constant divided by a tensor is not affine"):
        propagate(Shifted().double(), x, "guided_backprop")  # x + 1 is an affine layer, 1 / x is not
    with pytest.raises(UnsupportedLayerError, match="one tensor of logits"):
        propagate(TwoOutputs().double(), x, "deeplift")


def test_training_mode_batch_norm_is_refused():
    net = tiny_net("seq").train()
    with pytest.raises(ValueError, match=r"eval mode.*layer '1' \(BatchNorm2d\).*model.eval\(\)"):
        explain(net, tiny_inputs(2), "lrp")


def test_pattern_methods_need_patterns_of_this_model():
    net, x = tiny_net("seq"), tiny_inputs(2)
    with pytest.raises(ValueError, match=r"pattern_attribution needs patterns: pass patterns=.*fit_patterns"):
        explain(net, x, "pattern_attribution")
    with pytest.raises(TypeError, match="patterns must come from fit_patterns"):
        explain(net, x, "pattern_net", patterns={"0": torch.ones(1)})
    other = fit_patterns(tiny_net("res"), x, cache=False)
    with pytest.raises(ValueError, match="no entry for layer '11'.*another model"):
        explain(net, x, "pattern_net", patterns=other)
    wider = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(80, 3)).double().eval()
    with pytest.raises(ValueError, match=r"pattern of layer '4' has shape \(3, 64\) but its weight has \(3, 80\)"):
        explain(wider, x, "pattern_net", patterns=fit_patterns(nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3)).double().eval(),
            x, cache=False))
    with pytest.raises(ValueError, match="data must have"):
        fit_patterns(net, torch.rand(5, dtype=torch.float64))


@pytest.mark.parametrize("method, options, message", [
    ("lrp_alpha_beta", {"preset": "a3b1"}, "preset must be one of"),
    ("lrp_alpha_beta", {"alpha": 0.5}, "alpha >= 1"),
    ("lrp_cmp", {"alpha": 2, "preset": "a2b1"}, "either alpha or preset"),
    ("lrp_epsilon", {"epsilon": 0.0}, "epsilon must be positive"),
    ("rectgrad", {"q": 120}, r"percentile q must lie in \[0, 100\]"),
    ("deeplift", {"variant": "reveal_cancel"}, "variant must be one of"),
    ("deeplift", {"reference": torch.zeros(3, 8, 8, dtype=torch.float64)}, "does not broadcast"),
    ("deeplift", {"reference": torch.full((2, 8, 8), float("nan"), dtype=torch.float64)}, "reference contains NaN"),
    ("lrp", {"bounds": (1.0, 0.0)}, "lower < upper"),
    ("deep_taylor", {"bounds": (0.0,)}, r"bounds must be \(lower, upper\)"),
])
def test_bad_method_options(method, options, message):
    with pytest.raises(ValueError, match=message):
        explain(tiny_net("seq"), tiny_inputs(2), method, **options)


def test_unknown_option_names_the_method():
    with pytest.raises(TypeError, match="guided_backprop.*unexpected keyword argument 'epsilon'"):
        explain(tiny_net("seq"), tiny_inputs(2), "guided_backprop", epsilon=0.1)


def test_propagate_start_and_signal_are_checked():
    net, x = tiny_net("seq"), tiny_inputs(2)
    with pytest.raises(ValueError, match="start must be one of layer_names"):
        propagate(net, x, "lrp", start="conv9", signal=torch.ones(2, 4), bounds=(0, 1))
    with pytest.raises(ValueError, match="needs a signal"):
        propagate(net, x, "lrp", start="4", bounds=(0, 1))
    with pytest.raises(ValueError, match=r"signal at '4' must have shape \(2, 6, 4, 4\)"):
        propagate(net, x, "guided_backprop", start="4", signal=torch.ones(2, 6, 4))
    with pytest.raises(ValueError, match=r"signal at '11' must have shape \(2, 3\)"):
        propagate(net, x, "guided_backprop", signal=torch.ones(2, 4, dtype=torch.float64))
