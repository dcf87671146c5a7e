"""Sixt et al. Appendix B (Fig. 7): non-negative matrix chains align random vectors exponentially fast,
Gaussian chains do not; and the cosine tools the simulation and the CSC share."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from geomexpl.sanity import (fit_log_decay, matrix_chain_convergence, one_minus_abs_cosine,
                             random_baseline_median)
from geomexpl.sanity.matrix_chain import layer_matrices

SETTINGS = settings(deadline=None, max_examples=15)


def chain(kind, seed=0, **kw):
    kw = {"depth": 16, "n": 64, "n_vectors": 5, "chains": 4, **kw}
    return matrix_chain_convergence(kind, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("kind, alpha", [("nonneg_50", None), ("positive", None), ("alpha_beta", 1.0),
                                         ("alpha_beta", 2.0)])
def test_non_negative_chains_converge_exponentially(kind, alpha):
    result = chain(kind, alpha=alpha)
    fit = result.fit()
    assert fit.slope < -1.0  # 1 - cos shrinks by more than e per layer
    assert fit.r2 > 0.98  # a straight line on the log scale: exponential decay
    assert fit.points >= 8
    assert result.one_minus_median_cos[-1] < 1e-6  # aligned to float32 precision within 16 layers


@pytest.mark.parametrize("kind", ["gaussian", "gaussian_relu"])
def test_gaussian_chains_do_not_converge(kind):
    result = chain(kind)
    nonneg = chain("nonneg_50")
    assert result.one_minus_median_cos.min() > 0.05  # still far from aligned after 16 layers
    assert nonneg.one_minus_median_cos[-1] < 1e-12
    # Their log-decay is at least 10x slower than a non-negative chain's (the Gaussian product's
    # top Lyapunov gap is O(1/n), so with n = 64 it stays almost flat).
    assert fit_log_decay(result.depths, result.one_minus_median_cos).slope > 0.1 * nonneg.fit().slope
    if kind == "gaussian":
        assert result.one_minus_median_cos.min() > 0.3


@SETTINGS
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(["nonneg_50", "positive"]))
def test_any_non_negative_chain_aligns(seed, kind):
    result = chain(kind, seed=seed, depth=12, n=24, n_vectors=3, chains=2)
    assert result.one_minus_median_cos[-1] < 1e-4
    assert result.one_minus_median_cos[-1] < 1e-3 * result.one_minus_median_cos[0]


def test_alpha_one_is_the_z_plus_rule():
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z_plus = layer_matrices("alpha_beta", (5, 7), 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(z_plus, w.clamp_min(0))
    ab = layer_matrices("alpha_beta", (5, 7), 3.0, torch.Generator().manual_seed(3))
    assert torch.allclose(ab, torch.where(w > 0, 3 * w, 2 * w))
    same = [chain(k, seed=5, alpha=a).one_minus_median_cos for k, a in (("alpha_beta", 1.0), ("nonneg_50", None))]
    np.testing.assert_array_equal(*same)


def test_larger_beta_converges_slower():
    slopes = [chain("alpha_beta", alpha=a, n=64, depth=20).fit().slope for a in (1.0, 2.0, 3.0)]
    assert slopes[0] < slopes[1] < slopes[2] < 0


@SETTINGS
@given(st.integers(0, 2 ** 31 - 1), st.integers(2, 40), st.floats(-3, 3))
def test_one_minus_abs_cosine_matches_the_definition(seed, dim, scale):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, 6, dim, generator=g, dtype=torch.float64)
    expected = 1 - F.cosine_similarity(a, b, dim=-1).abs()
    torch.testing.assert_close(one_minus_abs_cosine(a, b), expected, atol=1e-12, rtol=0)
    # invariant to scaling either vector, including a sign flip
    factor = 10.0 ** scale
    torch.testing.assert_close(one_minus_abs_cosine(a, -factor * b), expected, atol=1e-12, rtol=0)


def test_one_minus_abs_cosine_resolves_tiny_angles_and_marks_zero_vectors():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1e-9, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    gap = one_minus_abs_cosine(a, b)
    assert gap[0].item() == pytest.approx(0.5e-18, rel=1e-6)  # 1 - cos(t) ~ t^2/2; naive 1 - cos gives 0
    assert torch.isnan(gap[1])


@pytest.mark.parametrize("dim", [1, 2, 3, 16, 256])
def test_random_baseline_median_matches_monte_carlo(dim):
    g = torch.Generator().manual_seed(dim)
    a, b = torch.randn(2, 10000, dim, generator=g, dtype=torch.float64)
    sampled = float((1 - one_minus_abs_cosine(a, b)).median())
    assert random_baseline_median(dim) == pytest.approx(sampled, rel=0.04)


def test_fit_log_decay_recovers_the_rate_and_ignores_the_floor():
    depths = np.arange(1, 15)
    values = 0.7 * np.exp(-1.5 * depths)
    values[10:] = 0.0  # converged to working precision
    fit = fit_log_decay(depths, values)
    assert fit.slope == pytest.approx(-1.5)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.points == 10
    with pytest.raises(ValueError, match="at least 3"):
        fit_log_decay(depths, np.zeros(14))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown matrix kind 'relu'"):
        matrix_chain_convergence("relu")
    with pytest.raises(ValueError, match="alpha is required"):
        matrix_chain_convergence("alpha_beta")
    with pytest.raises(ValueError, match="alpha is required"):
        matrix_chain_convergence("positive", alpha=2.0)
    with pytest.raises(ValueError, match="n_vectors"):
        matrix_chain_convergence("positive", n_vectors=1)
