"""The manipulation attack: per-example independence, constraints, presets, validation, baseline."""
import math

import pytest
import torch
from torch import nn

from geomexpl import attack
from geomexpl.attack import manipulate
from geomexpl.explain import explain, relevance_map


def small_cnn(seed=0, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, classes)
                         ).double().eval().requires_grad_(False)


def batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)


def target_maps(n=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, 8, 8, generator=g, dtype=torch.float64)
    return t / t.flatten(1).sum(1).view(-1, 1, 1)


def test_examples_are_independent_of_their_batch():
    model, x, t = small_cnn(), batch(), target_maps()
    together = manipulate(model, x, t, "gradient", steps=25, lr=1e-2)
    for i in (0, 3):
        alone = manipulate(model, x[i:i + 1], t[i:i + 1], "gradient", steps=25, lr=1e-2)
        torch.testing.assert_close(alone.x_adv[0], together.x_adv[i], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(alone.losses["total"][:, 0], together.losses["total"][:, i])


def test_attack_moves_the_map_towards_the_target_and_stays_valid():
    model, x, t = small_cnn(), batch(), target_maps()
    result = manipulate(model, x, t, "gradient", steps=80, lr=1e-2, record_every=20)
    before = ((relevance_map(explain(model, x, "gradient")) - t) ** 2).flatten(1).sum(1)
    after = ((result.map_adv - t) ** 2).flatten(1).sum(1)
    assert (after < before).all()
    assert result.losses["explanation"][-1].sum() < result.losses["explanation"][0].sum()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.path.shape == (5, 4, 1, 8, 8) and result.path_steps == [0, 20, 40, 60, 80]
    torch.testing.assert_close(result.path[0], x)
    torch.testing.assert_close(result.path[-1], result.x_adv)
    rows = result.table()
    assert len(rows) == 4 and {"map_pcc", "image_mse", "class_kept", "logit_change"} <= rows[0].keys()


@pytest.mark.parametrize("budget", [{"linf": 0.01}, {"l2": 0.05}])
def test_budgets_are_respected(budget):
    model, x, t = small_cnn(), batch(), target_maps()
    delta = (manipulate(model, x, t, "gradient", steps=30, lr=5e-2, **budget).x_adv - x).flatten(1)
    if "linf" in budget:
        assert delta.abs().max() <= 0.01 + 1e-12
    else:
        assert (delta.norm(dim=1) <= 0.05 + 1e-9).all()


def test_presets_fill_in_left_out_options():
    model, x, t = small_cnn(), batch(1), target_maps(1)
    cfg = manipulate(model, x, t, "gradient", steps=2).config
    assert (cfg.lr, cfg.beta_growth) == (1e-3, (10.0, 100.0))
    cfg = manipulate(model, x, t, "gradient", steps=2, smooth_beta=0.8).config
    assert (cfg.lr, cfg.beta_growth) == (2.5e-4, None)
    cfg = manipulate(model, x, t, "gradient", steps=2, smoothgrad=3).config
    assert cfg.lr == 3e-3
    assert attack.preset("integrated_gradients").steps == 500
    assert attack.preset("gradient").steps == 1500


def test_loss_weights_reduce_to_the_reference_and_scale_like_mse():
    assert attack.loss_weights(224 * 224, 1000) == pytest.approx((1e11, 1e6))
    w32, _ = attack.loss_weights(32 * 32, 10)
    w64, _ = attack.loss_weights(64 * 64, 10)
    assert w64 / w32 == pytest.approx(16.0)  # MSE of sum-one maps scales like 1/N^2


def test_smoothed_attack_is_evaluated_on_the_smoothed_method():
    model, x, t = small_cnn(), batch(2), target_maps(2)
    result = manipulate(model, x, t, "gradient", steps=3, smooth_beta=0.8)
    torch.testing.assert_close(result.map_x, relevance_map(explain(model, x, "gradient", beta=0.8)))
    plain = manipulate(model, x, t, "gradient", steps=3)
    torch.testing.assert_close(plain.map_x, relevance_map(explain(model, x, "gradient")))


@pytest.mark.parametrize("bad,match", [
    ("nan", "x contains NaN"), ("inf", "x contains inf"), ("range", "outside the declared range"),
    ("shape", "target_map must have shape"), ("negative", "non-negative"), ("zero", "all zero"),
    ("method", "unknown explanation method"), ("steps", "steps must be positive"),
])
def test_bad_input_is_refused_before_any_work(bad, match, monkeypatch):
    model, x, t = small_cnn(), batch(2), target_maps(2)
    if bad == "nan":
        x[0, 0, 0, 0] = math.nan
    elif bad == "inf":
        x[1, 0, 2, 2] = math.inf
    elif bad == "range":
        x[0, 0, 0, 0] = 1.5
    elif bad == "shape":
        t = t[:, :4]
    elif bad == "negative":
        t[0, 0, 0] = -0.1
    elif bad == "zero":
        t[1] = 0
    monkeypatch.setattr(torch.optim.Adam, "step", lambda *a, **k: pytest.fail("attack started"))
    with pytest.raises(ValueError, match=match):
        manipulate(model, x, t, "no_such_method" if bad == "method" else "gradient",
                   steps=-1 if bad == "steps" else 2)


def test_target_builders():
    model = small_cnn()
    t = attack.text_target("this explanation was manipulated", (32, 32), batch=3)
    assert t.shape == (3, 32, 32) and (t >= 0).all()
    torch.testing.assert_close(t.flatten(1).sum(1), torch.ones(3))
    assert t[0].flatten().topk(50).values.sum() > 50 / 1024 * 3  # ink is concentrated, not uniform
    square = torch.zeros(16, 16)
    square[4:12, 4:12] = 1
    m = attack.mask_target(square, (8, 8), batch=2)
    assert m.shape == (2, 8, 8) and m[0, 0, 0] == 0 and m[0, 4, 4] > 0
    e = attack.explanation_target(model, batch(2), "gradient")
    torch.testing.assert_close(e, relevance_map(explain(model, batch(2), "gradient")))
    with pytest.raises(ValueError, match="no positive entry"):
        attack.mask_target(torch.zeros(4, 4), (8, 8))


def test_ghorbani_raises_relevance_in_region_and_keeps_the_class():
    model, x = small_cnn(), batch()
    region = torch.zeros(4, 8, 8, dtype=torch.float64)
    region[:, :4, :4] = 1
    x_adv = attack.ghorbani_attack(model, x, region, steps=20, step_size=1e-2, beta=10.0)
    inside = lambda z: (relevance_map(explain(model, z, "gradient")) * region).flatten(1).sum(1)  # noqa: E731
    # signed steps are not monotone per example, so the claim is about the batch: relevance moves in
    assert inside(x_adv).mean() > inside(x).mean() + 0.02
    assert (model(x_adv).argmax(1) == model(x).argmax(1)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_without_beta_growth_a_twin_is_attacked_as_it_is_not_as_its_relu_base():
    """beta_growth=None means "differentiate the given model": for a softplus twin that is the twin.
    Only the explanation term is on, so the ReLU base (whose gradient map is piecewise constant in x)
    would give a zero step: x_adv would stay x."""
    from geomexpl.nets import softplus_twin

    twin, x, t = softplus_twin(small_cnn(), 3.0), batch(2), target_maps(2)
    result = manipulate(twin, x, t, "gradient", steps=1, lr=1e-3, beta_growth=None, weights=(1.0, 0.0))
    assert (result.x_adv - x).abs().max() > 1e-4
    base = manipulate(small_cnn(), x, t, "gradient", steps=1, lr=1e-3, beta_growth=None, weights=(1.0, 0.0))
    assert (base.x_adv - x).abs().max() == 0  # the control: the ReLU net itself gives no step
