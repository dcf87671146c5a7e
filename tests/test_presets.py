"""The supplement's five tables as presets: rows, loss factors, the learning-rate conventions, and
that manipulate() takes a row's settings."""
import pytest
import torch
from torch import nn

from geomexpl import attack
from geomexpl.attack import PIXEL_STD, Preset, manipulate
from geomexpl.attack.presets import TABLE2, TABLE3


def tiny_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return net.double().eval().requires_grad_(False)


def inputs(n=2):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(n, 4, 4, generator=g, dtype=torch.float64)
    return x, t / t.flatten(1).sum(1).view(-1, 1, 1)


def test_table2_rows_are_the_supplements_per_architecture():
    rows = {arch: (r.steps, r.lr, r.beta_growth, r.factors, r.output) for arch, r in TABLE2.items()}
    assert rows == {"vgg": (1500, 1e-3, (10.0, 100.0), (1e11, 10.0), "logits"),
                    "alexnet": (4000, 1e-3, (10.0, 100.0), (1e11, 10.0), "logits"),
                    "densenet": (2000, 5e-4, (30.0, 300.0), (1e11, 10.0), "logits"),
                    "resnet": (2000, 1e-3, (10.0, 100.0), (1e11, 10.0), "logits")}
    assert attack.preset("gradient", table=2, arch="alexnet") is TABLE2["alexnet"]


def test_table3_factors_belong_to_cifar_sized_maps_so_digits_use_them_unscaled():
    row = attack.preset("lrp", table=3)
    assert (row.steps, row.lr, row.beta_growth) == (1500, 2e-4, None)
    assert row.weights(32 * 32, 10) == pytest.approx((1e7, 1e2))
    assert row.weights(64 * 64, 10) == pytest.approx((16e7, 1e2))  # MSE of sum-one maps scales like 1/N^2
    assert TABLE3["lrp"].reference == (1024, 10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="lrp", table=2, arch="vgg"), "Table 2 has the gradient"),
    (dict(method="gradient", table=2, arch="mlp"), "Table 2 has the gradient"),
    (dict(method="gradient", table=3), "Table 3 has only"),
    (dict(method="gradient", table=6), "Tables"),
])
def test_a_row_a_table_lacks_is_an_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attack.preset(**kwargs)


def test_rate_conventions_convert_to_unit_pixels():
    row = attack.preset("gradient")
    assert row.rate() == row.rate("table") == 1e-3
    assert row.rate("unit") == pytest.approx(1e-3 * PIXEL_STD)
    assert PIXEL_STD == pytest.approx(sum((0.229, 0.224, 0.225)) / 3, abs=1e-3)
    with pytest.raises(ValueError, match="rate convention"):
        row.rate("normalised")


def test_manipulate_fills_left_out_options_from_the_given_row():
    x, t = inputs()
    row = Preset(7, 3e-3, beta_growth=None, factors=(2e5, 5.0), reference=(16, 3), output="logits")
    cfg = manipulate(tiny_net(), x, t, "gradient", preset=row).config
    assert (cfg.steps, cfg.lr, cfg.beta_growth, cfg.output) == (7, 3e-3, None, "logits")
    assert (cfg.w_expl, cfg.w_out) == pytest.approx((2e5, 5.0))  # the reference is this input: no rescaling
    cfg = manipulate(tiny_net(), x, t, "gradient", preset=row, steps=2, lr=1e-4, output="softmax").config
    assert (cfg.steps, cfg.lr, cfg.output) == (2, 1e-4, "softmax")  # given options win over the row


def test_manipulate_without_a_row_keeps_table1_and_softmax():
    x, t = inputs()
    cfg = manipulate(tiny_net(), x, t, "gradient", steps=1).config
    assert (cfg.lr, cfg.output) == (1e-3, "softmax")
    assert (cfg.w_expl, cfg.w_out) == pytest.approx(attack.loss_weights(16, 3))


def test_manipulate_refuses_a_row_that_is_not_a_preset():
    x, t = inputs()
    with pytest.raises(TypeError, match="preset must be a geomexpl.attack.Preset"):
        manipulate(tiny_net(), x, t, "gradient", steps=1, preset={"steps": 3})
