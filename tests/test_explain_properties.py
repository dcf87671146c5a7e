"""Properties of the propagation engine and its methods (conservation, completeness, signs, ...).

Tiny float64 nets from test_explain_differentiable cover conv, folded and unfolded batch norm,
max / avg / adaptive-avg pooling, residual addition and concatenation.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_explain_differentiable import KINDS, conv_variants_net, tiny_inputs, tiny_net
from torch import nn

from geomexpl.explain import explain, fit_patterns, layer_names, propagate, relevance_map
from geomexpl.explain.propagation import forward_trace
from geomexpl.explain.rules import percentile
from geomexpl.nets import softplus_twin, zoo

SETTINGS = settings(deadline=None, max_examples=8)
seeds = st.integers(0, 2**16)
kinds = st.sampled_from(KINDS)


def target_logit(net, x, target=None):
    logits = net(x)
    target = logits.argmax(1) if target is None else target
    return logits.gather(1, target[:, None])[:, 0], target


def totals(h: torch.Tensor) -> torch.Tensor:
    return h.flatten(1).sum(1)


# ------------------------------------------------------------------ the engine itself
@pytest.mark.parametrize("arch", zoo.ARCHS)
def test_engine_forward_reproduces_every_zoo_model_relu_and_softplus(arch):
    net = zoo.build(arch).eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for model in (net, softplus_twin(net, 5.0)):
        trace = forward_trace(model, x)
        torch.testing.assert_close(trace.values[trace.graph.output], model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta", [None, 3.0])
def test_engine_gradient_rules_equal_autograd(kind, beta):
    """The 'gradient' rule set walks the same graph as autograd: W^T, masks, argmax routing."""
    model = softplus_twin(tiny_net(kind), beta)
    x = tiny_inputs(3)
    h, _ = propagate(model, x, "gradient")
    torch.testing.assert_close(h, explain(model, x, "gradient"), rtol=1e-12, atol=1e-14)


@SETTINGS
@given(kind=kinds, seed=seeds)
def test_lrp_epsilon_to_zero_is_gradient_times_input(kind, seed):
    """LRP-z = gradient x input on ReLU nets (Sixt sec. 2.2), biases and batch norms included."""
    net, x = tiny_net(kind, seed), tiny_inputs(3, seed)
    expected = explain(net, x, "grad_x_input")
    # epsilon absorbs a fraction eps / z of the relevance of units with tiny z (seen down to 1e-10)
    torch.testing.assert_close(explain(net, x, "lrp_epsilon", epsilon=1e-15), expected,
                               rtol=1e-6, atol=1e-6 * float(expected.abs().max()))


@SETTINGS
@given(kind=kinds, seed=seeds, method=st.sampled_from(["lrp", "deep_taylor", "lrp_alpha_beta", "lrp_epsilon"]))
def test_lrp_conserves_relevance_on_bias_free_nets(kind, seed, method):
    """sum_i R_i = f_k(x) on nets without biases: epsilon -> 0 always; z+ (alpha1-beta0, with zB /
    w^2 in Deep Taylor) where f_k > 0 (a logit without positive contributions has nothing to give)."""
    net, x = tiny_net(kind, seed, bias=False), tiny_inputs(4, seed)
    options = {"preset": "a1b0"} if method == "lrp_alpha_beta" else {"epsilon": 1e-12} if method == "lrp_epsilon" else {}
    f, _ = target_logit(net, x)
    keep = torch.ones_like(f, dtype=torch.bool) if method == "lrp_epsilon" else f > 0
    assume(bool(keep.any()))
    # up to what the stabilisers (1e-9 for z+) absorb at near-zero denominators (tiny nets: f_k ~ 1e-4)
    torch.testing.assert_close(totals(explain(net, x, method, **options))[keep], f[keep], rtol=1e-4, atol=0)


@SETTINGS
@given(kind=kinds, seed=seeds)
def test_zplus_relevance_is_non_negative_and_excitation_is_a_probability(kind, seed):
    net = tiny_net(kind, seed)
    x = tiny_inputs(3, seed)
    f, target = target_logit(net, x)
    lrp = explain(net, x, "lrp", target) * f.sign().view(-1, 1, 1, 1)
    assert float(lrp.min()) >= -1e-12
    signed_x = 2 * x - 1  # excitation backprop's z+ rule holds for inputs of either sign
    ebp = explain(net, signed_x, "excitation_backprop", target)
    assert float(ebp.min()) >= -1e-12
    assert float(totals(ebp).max()) <= 1 + 1e-9  # marginal winning probabilities: mass 1 at most


@SETTINGS
@given(kind=kinds, seed=seeds, smooth=st.booleans())
def test_integrated_gradients_completeness(kind, seed, smooth):
    net = tiny_net(kind, seed)
    model = softplus_twin(net, 4.0) if smooth else net
    x = tiny_inputs(2, seed)
    f, target = target_logit(model, x)
    f0, _ = target_logit(model, torch.zeros_like(x), target)
    # the midpoint rule's error is O(1/m) at the ReLU and max-pool kinks on the path (max pooling
    # keeps kinks in the twin): worst 1.4% of the output scale at 256 steps over 180 seeds, so 2048
    # steps must be within 0.5%. The exact quadrature is checked against Captum in test_explain_oracle.
    h = explain(model, x, "integrated_gradients", target, steps=2048)
    scale = float(torch.maximum(f.abs(), f0.abs()).max())
    torch.testing.assert_close(totals(h), f - f0, rtol=0, atol=5e-3 * scale)


@SETTINGS
@given(kind=kinds, seed=seeds, beta=st.sampled_from([None, 4.0]), zero_reference=st.booleans())
def test_deeplift_contributions_sum_to_the_output_difference(kind, seed, beta, zero_reference):
    model = softplus_twin(tiny_net(kind, seed), beta)
    x = tiny_inputs(3, seed)
    reference = None if zero_reference else tiny_inputs(1, seed + 1)
    f, target = target_logit(model, x)
    f0, _ = target_logit(model, torch.zeros_like(x) if zero_reference else reference.expand_as(x), target)
    h = explain(model, x, "deeplift", target, reference=reference)
    torch.testing.assert_close(totals(h), f - f0, rtol=1e-9, atol=1e-12)


def test_deeplift_ablation_follows_the_decoupled_chains_of_sixt_eq_13():
    """On dense - relu - dense: r+ = 1[dx>0] W1+^T (s r+_h), r- = 1[dx<0] W1-^T (s r-_h), r+-_h = W2+-_k,
    s the ReLU's secant slope; the contributions are r+ dx+ + r- dx-."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double().eval()
    x, x0 = torch.randn(4, 6, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)
    target = torch.tensor([0, 1, 0, 1])
    w1, w2 = net[0].weight, net[2].weight[target]  # [5, 6], [B, 5]
    z, z0 = net[0](x), net[0](x0)
    slope = (torch.relu(z) - torch.relu(z0)) / (z - z0)
    dz, dx = z - z0, x - x0
    r_pos_h = w2.clamp(min=0) * (dz > 0) * slope
    r_neg_h = w2.clamp(max=0) * (dz < 0) * slope
    r_pos = (r_pos_h @ w1.clamp(min=0)) * (dx > 0)
    r_neg = (r_neg_h @ w1.clamp(max=0)) * (dx < 0)
    expected = r_pos * dx.clamp(min=0) + r_neg * dx.clamp(max=0)
    ours = explain(net, x, "deeplift", target, reference=x0, variant="ablation")
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(ours, explain(net, x, "deeplift", target, reference=x0))


def test_pattern_attribution_recovers_the_signal_direction():
    """Kindermans et al.: x = s a_s + d a_d with w orthogonal to the distractor a_d; the gradient is
    w, but the patterns, PatternNet and PatternAttribution recover a_s."""
    gen = torch.Generator().manual_seed(0)
    a_s, a_d = torch.randn(5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)
    w = torch.randn(5, generator=gen, dtype=torch.float64)
    w -= (w @ a_d) / (a_d @ a_d) * a_d
    net = nn.Linear(5, 1).double().eval().requires_grad_(False)
    net.weight.copy_(w[None])
    s, d = torch.randn(2, 20000, 1, generator=gen, dtype=torch.float64)
    data = s * a_s + d * a_d
    patterns = fit_patterns(net, data, cache=False)

    def cosine(u, v):
        return float(u @ v / (u.norm() * v.norm()))
    for a in (patterns.positive["0"][0], patterns.negative["0"][0]):
        assert cosine(a, a_s) > 0.999
        assert float(w @ a) == pytest.approx(1.0)  # normalisation a = cov / (w^T cov)
    x = data[:8]
    gradient = explain(net, x, "gradient")[0]
    assert abs(cosine(gradient, a_s)) < 0.99  # the gradient is not the signal direction
    for h in explain(net, x, "pattern_net", patterns=patterns):
        assert abs(cosine(h, a_s)) > 0.999
    attribution = explain(net, x, "pattern_attribution", patterns=patterns)[0]
    assert abs(cosine(attribution, w * a_s)) > 0.999


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_maps_of_two_classes_differ(kind):
    net, x = tiny_net(kind), tiny_inputs(2)
    maps = [relevance_map(explain(net, x, "gradient", c)) for c in (0, 1)]
    assert float((maps[0] - maps[1]).abs().sum((1, 2)).min()) > 1e-2


# ------------------------------------------------------------------ batching, dtypes, no side effects
@pytest.mark.parametrize("method", ["rectgrad", "lrp", "deeplift", "pattern_attribution", "lrp_cmp"])
def test_batched_equals_one_by_one_and_float32_matches_float64(method):
    net, x = tiny_net("res"), tiny_inputs(4)
    options = {"patterns": fit_patterns(net, tiny_inputs(32, 1), cache=False)} if "pattern" in method else {}
    target = torch.tensor([0, 1, 2, 0])
    batched = explain(net, x, method, target, **options)
    single = torch.cat([explain(net, x[i:i + 1], method, target[i:i + 1], **options) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-14)
    net32 = tiny_net("res").float()
    options32 = {"patterns": fit_patterns(net32, tiny_inputs(32, 1).float(), cache=False)} if options else {}
    h32 = explain(net32, x.float(), method, target, **options32)
    assert h32.dtype == torch.float32
    torch.testing.assert_close(h32.double(), batched, rtol=1e-3, atol=1e-4 * float(batched.abs().max()))


def test_explaining_leaves_the_model_untouched():
    net = tiny_net("dense")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = tiny_inputs(2).requires_grad_(True)
    for method in ("lrp", "guided_backprop", "deeplift"):
        explain(softplus_twin(net, 2.0), x, method).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in net.modules())
    assert all(type(m) is not nn.Softplus for m in net.modules())


# ------------------------------------------------------------------ the propagate() entry point
def test_layer_names_fold_batch_norm_and_start_with_the_input():
    names = layer_names(tiny_net("seq"))
    assert names[0] == "input_1" and names[1] == "0"  # conv '0' with its folded BatchNorm '1'
    assert "1" not in names and "2" in names
    assert "bn" in layer_names(tiny_net("dense"))  # a batch norm after a concat stays a layer


@pytest.mark.parametrize("method", ["guided_backprop", "lrp", "deeplift", "rectgrad"])
def test_injecting_a_recorded_signal_reproduces_the_explanation(method):
    model = softplus_twin(tiny_net("seq"), 3.0)
    x = tiny_inputs(3)
    h, records = propagate(model, x, method, record=True, bounds=(0.0, 1.0)) if method == "lrp" else \
        propagate(model, x, method, record=True)
    names = layer_names(model)
    assert set(records) == set(names)
    options = {"bounds": (0.0, 1.0)} if method == "lrp" else {}
    for layer in ("4", "9", names[-1]):
        again, below = propagate(model, x, method, start=layer, signal=records[layer], record=True, **options)
        torch.testing.assert_close(again, h, rtol=1e-10, atol=1e-14)
        assert set(below) == set(names[: names.index(layer) + 1])


def test_injected_random_signal_is_propagated_linearly_by_lrp_epsilon():
    """LRP's rules are linear in the injected relevance (the matrix chain of Sixt et al.)."""
    net, x = tiny_net("res"), tiny_inputs(2)
    shape = (2,) + tuple(forward_trace(net, x).values["conv1"].shape[1:])
    gen = torch.Generator().manual_seed(0)
    v1, v2 = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    run = lambda v: propagate(net, x, "lrp_epsilon", start="conv1", signal=v)[0]  # noqa: E731
    torch.testing.assert_close(run(2 * v1 - 3 * v2), 2 * run(v1) - 3 * run(v2), rtol=1e-9, atol=1e-12)


def test_explicit_output_signal_equals_the_default_start():
    net, x = tiny_net("dense"), tiny_inputs(2)
    f, target = target_logit(net, x)
    one_hot = torch.nn.functional.one_hot(target, 3).double()
    torch.testing.assert_close(propagate(net, x, "lrp", signal=one_hot * f[:, None], bounds=(0, 1))[0],
                               explain(net, x, "lrp"))
    torch.testing.assert_close(propagate(net, x, "guided_backprop", signal=one_hot)[0],
                               explain(net, x, "guided_backprop"))


def test_pattern_cache_is_reused_and_a_corrupt_file_refitted(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMEXPL_CACHE", str(tmp_path))
    net, data = tiny_net("seq"), tiny_inputs(16, 2)
    first = fit_patterns(net, data)
    (path,) = (tmp_path / "patterns").glob("*.pt")
    assert path.stem == first.key
    second = fit_patterns(net, data)
    assert all(torch.equal(first.positive[k], second.positive[k]) for k in first.positive)
    assert fit_patterns(net, data[:8]).key != first.key  # other data, other patterns
    path.write_bytes(b"not a torch file")
    third = fit_patterns(net, data)
    assert all(torch.allclose(first.positive[k], third.positive[k]) for k in first.positive)


@pytest.mark.parametrize("beta", [None, 3.0])
def test_conv_variants_transpose_exactly(beta):
    model = softplus_twin(conv_variants_net(), beta)
    x = torch.rand(3, 2, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(propagate(model, x, "gradient")[0], explain(model, x, "gradient"),
                               rtol=1e-12, atol=1e-14)
    f, _ = target_logit(model, x)
    torch.testing.assert_close(totals(explain(model, x, "deep_taylor")), f, rtol=1e-5, atol=0)


@pytest.mark.parametrize("arch", ["resnet", "densenet", "alexnet"])
def test_engine_gradient_equals_autograd_on_zoo_models(arch):
    net = zoo.build(arch).eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = explain(net, x, "gradient")
    torch.testing.assert_close(propagate(net, x, "gradient")[0], expected, rtol=1e-4,
                               atol=1e-5 * float(expected.abs().max()))


@SETTINGS
@given(n=st.integers(1, 300), q=st.floats(0, 100), seed=seeds)
def test_rectgrad_threshold_is_numpys_percentile(n, q, seed):
    v = torch.randn(3, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = np.percentile(v.numpy(), q, axis=1)[:, None]
    np.testing.assert_allclose(percentile(v, q).numpy(), expected, rtol=1e-12, atol=1e-12)
