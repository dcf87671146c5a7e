"""The attack step's gradient is exact: the prepared objective (batch norm folded, logits captured
from the explanation's own forward, reference output cached) equals the plain definition of eq. 4,
and its autograd gradient equals central finite differences on a small float64 network."""
import pytest
import torch
from torch import nn

from geomexpl.attack.engine import AttackConfig, Objective
from geomexpl.attack.surrogate import fold_batchnorm
from geomexpl.explain import explain, fit_patterns, relevance_map
from geomexpl.nets import softplus_twin


def bn_cnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics and affine parameters
            m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    return net.eval().requires_grad_(False)


CASES = [  # (method, beta, extra config)
    ("gradient", 7.0, {}),
    ("lrp", None, {}),
    ("integrated_gradients", 7.0, {"method_options": {"steps": 4}}),
    ("pattern_attribution", 7.0, {}),
    ("gradient", 7.0, {"smoothgrad": 3}),
    ("gradient", None, {"smooth_beta": 0.8}),
]


def _objective(model, x, method, beta, extra, patterns):
    g = torch.Generator().manual_seed(3)
    target_map = torch.rand(x.shape[0], 8, 8, generator=g, dtype=x.dtype)
    target_map = target_map / target_map.flatten(1).sum(1).view(-1, 1, 1)
    options = dict(extra.pop("method_options", {}))
    if method.startswith("pattern"):
        options["patterns"] = patterns
    cfg = AttackConfig(method=method, steps=1, lr=1e-3, w_expl=5.0, w_out=2.0,
                       beta_growth=None if beta is None else (beta, beta), method_options=options, **extra)
    lo, hi = torch.tensor(0.0, dtype=x.dtype), torch.tensor(1.0, dtype=x.dtype)
    target = torch.tensor([0, 2], dtype=torch.long)
    return Objective(model, x, target, target_map, cfg, lo, hi, None), cfg, target, target_map


def _loss(objective, x_adv, beta):
    objective.generator = torch.Generator().manual_seed(11)  # the same SmoothGrad noise at every call
    return objective(x_adv, beta)[2].sum()


@pytest.mark.parametrize("method,beta,extra", CASES)
def test_attack_gradient_matches_finite_differences(method, beta, extra):
    model = bn_cnn()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.8 + 0.1
    patterns = fit_patterns(model, torch.rand(64, 1, 8, 8, dtype=torch.float64), cache=False)
    objective, cfg, target, target_map = _objective(model, x, method, beta, dict(extra), patterns)
    assert objective.net is not model  # batch norm was folded for the surrogate
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)

    # the prepared objective equals eq. 4 computed plainly on the user's model
    loss = _loss(objective, x_adv, beta)
    smooth = {"beta": cfg.smooth_beta} if cfg.smooth_beta is not None else {}
    h = explain(softplus_twin(model, beta) if not smooth else model, x_adv, method, target,
                smoothgrad=cfg.smoothgrad, generator=torch.Generator().manual_seed(11),
                **smooth, **cfg.method_options)
    ref, out = (softplus_twin(model, beta)(z).softmax(1) for z in (x, x_adv))
    plain = (5.0 * (relevance_map(h) - target_map).pow(2).flatten(1).mean(1)
             + 2.0 * (out - ref).pow(2).mean(1)).sum()
    torch.testing.assert_close(loss, plain, rtol=1e-9, atol=0)

    (grad,) = torch.autograd.grad(loss, x_adv)
    eps = 1e-6
    for seed in range(3):
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
        with torch.no_grad():
            fd = (_loss(objective, x_adv + eps * v, beta) - _loss(objective, x_adv - eps * v, beta)) / (2 * eps)
        torch.testing.assert_close((grad * v).sum(), fd, rtol=1e-5, atol=1e-10)


def test_the_check_fails_without_the_double_backprop():
    """Negative control: dropping the explanation's dependence on x_adv (its second-order term)
    gives a gradient that the finite differences reject."""
    model = bn_cnn()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    objective, *_ = _objective(model, x, "gradient", 7.0, {}, None)
    x_adv = x.clone().requires_grad_(True)
    surrogate = softplus_twin(objective.net, 7.0)
    h = explain(surrogate, x_adv.detach(), "gradient", objective.target)  # first order only
    wrong = (5.0 * (relevance_map(h) - objective.target_map).pow(2).flatten(1).mean(1).sum()
             + 2.0 * (surrogate(x_adv).softmax(1) - surrogate(x).softmax(1).detach()).pow(2).mean(1).sum())
    (grad,) = torch.autograd.grad(wrong, x_adv)
    v = torch.randn_like(x)
    with torch.no_grad():
        fd = (_loss(objective, x_adv + 1e-6 * v, 7.0) - _loss(objective, x_adv - 1e-6 * v, 7.0)) / 2e-6
    assert not torch.allclose((grad * v).sum(), fd, rtol=1e-3)


def test_folding_is_exact_and_leaves_the_model_alone():
    model = bn_cnn()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)
    plain = nn.Sequential(nn.Linear(3, 2))
    assert fold_batchnorm(plain) is plain


def test_chunked_integrated_gradients_has_the_exact_gradient():
    """IG with its path split into chunks whose graphs are rebuilt in the backward pass: the same
    h and the same attack-loss gradient as the unchunked graph, and both match finite differences."""
    twin = softplus_twin(bn_cnn(), 5.0)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    goal = torch.rand(2, 8, 8, dtype=torch.float64)
    target = torch.tensor([1, 3])

    def loss(z, batch_size):
        return (relevance_map(explain(twin, z, "integrated_gradients", target, steps=6, batch_size=batch_size))
                - goal).pow(2).sum()

    xg = x.clone().requires_grad_(True)
    whole, chunked = loss(xg, 512), loss(xg, 4)  # 4 images = 2 path points per chunk: 3 chunks
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)
    (g_whole,) = torch.autograd.grad(whole, xg)
    (g_chunked,) = torch.autograd.grad(chunked, xg)
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-9, atol=1e-12)
    v = torch.randn_like(x)
    with torch.no_grad():
        fd = (loss(x + 1e-6 * v, 4) - loss(x - 1e-6 * v, 4)) / 2e-6
    torch.testing.assert_close((g_chunked * v).sum(), fd, rtol=1e-5, atol=1e-10)


def test_integrated_gradients_chunks_a_large_path_by_default(monkeypatch):
    """Left at its default, IG keeps the whole graph of a small path (digits) and checkpoints the
    path of a 224x224 RGB image in chunks of 6 points (about 3 GB on VGG-16 instead of 9 GB)."""
    from geomexpl.explain import gradients

    calls = []
    original = gradients._PathChunk.apply
    monkeypatch.setattr(gradients._PathChunk, "apply", lambda *a: calls.append(a[2].numel()) or original(*a))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 2)).requires_grad_(False)
    x = torch.rand(1, 3, 224, 224, requires_grad=True)
    explain(model, x, "integrated_gradients", 0)
    assert calls == [6, 6, 6, 6, 6]
    calls.clear()
    small = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 2)).requires_grad_(False)
    explain(small, torch.rand(64, 1, 32, 32, requires_grad=True), "integrated_gradients", 0)
    assert calls == []
