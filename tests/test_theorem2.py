"""Theorem 2 (paper sec. 4, supplement E.2): property tests of the identity, of the exact expectation
used to size the proof's approximation for d > 1, and of the check's ability to fail."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from theory_checks import theorem2 as t2

log_uniform = st.floats(math.log(0.1), math.log(10.0)).map(math.exp)  # beta and |w| in [0.1, 10]


def misscaled_gradient(x, w, beta):
    """The classic slip: grad softplus_beta(w.x) instead of grad softplus_{beta/|w|}(w.x)."""
    return w * torch.sigmoid(beta * (x @ w))[:, None]


def gaussian_sampler(n, d, beta, generator, like):
    """A wrong noise density: Gaussian with the logistic's variance pi^2 / (3 beta^2)."""
    return torch.randn(n, d, generator=generator, dtype=like.dtype, device=like.device) * t2.MATCHED_SIGMA / beta


def gaussian_density(e, beta):
    return stats.norm.pdf(e, scale=t2.MATCHED_SIGMA / beta)


@settings(deadline=None, max_examples=30)
@given(beta=log_uniform, w=log_uniform, sign=st.sampled_from([-1.0, 1.0]), beta_x=st.floats(-8.0, 8.0))
def test_one_dimensional_identity_holds_to_quadrature_accuracy(beta, w, sign, beta_x):
    # d = 1 is the exact case of the proof. quad is asked for 1e-13 and reports <= ~5e-12, so 1e-10
    # (dimensionless: divided by |w|, times beta) is quadrature accuracy, far below any modelling error.
    x, w = beta_x / beta, sign * w
    quad = t2.one_d_quadrature(x, w, beta)
    closed = t2.closed_form_gradient(torch.tensor([[x]], dtype=torch.float64), torch.tensor([w], dtype=torch.float64),
                                     beta)[0, 0].item()
    assert quad["quad_error"] < 1e-10
    assert abs(quad["gradient"] - closed) / abs(w) <= 1e-10
    assert beta * abs(quad["smoothed_relu"] - np.logaddexp(0.0, beta * x) / beta) <= 1e-10  # eq. (22)


@settings(deadline=None, max_examples=10)
@given(beta=log_uniform)
def test_logistic_density_is_normalised_with_sigmoid_cdf_and_logistic_variance(beta):
    # p_beta integrates to 1, its CDF is sigmoid(beta e) (eq. 24), its variance pi^2 / (3 beta^2).
    p = lambda e: t2.logistic_density(e, beta)
    opts = dict(epsabs=1e-13, epsrel=1e-12)
    assert integrate.quad(p, -np.inf, np.inf, **opts)[0] == pytest.approx(1.0, abs=1e-10)
    assert integrate.quad(p, -np.inf, 0.7 / beta, **opts)[0] == pytest.approx(1 / (1 + math.exp(-0.7)), abs=1e-10)
    variance = integrate.quad(lambda e: e * e * p(e), -np.inf, np.inf, **opts)[0]
    assert variance * beta ** 2 == pytest.approx(math.pi ** 2 / 3, rel=1e-9)


@settings(deadline=None, max_examples=15)
@given(d=st.integers(1, 100), single=st.booleans(), beta=log_uniform, seed=st.integers(0, 2 ** 31 - 1))
def test_monte_carlo_expectation_matches_within_standard_errors(d, single, beta, seed):
    # With one non-zero weight eq. (21) is exact; with dense w the exact reference is w [sigmoid + D].
    # Tolerance: k standard errors (SE from the sample), k the two-sided normal quantile for a 1e-6
    # false-alarm rate per example, Bonferroni over the components tested (15 examples: <= 1.5e-5 flaky).
    rng = np.random.default_rng(seed)
    w = np.zeros(d)
    if single or d == 1:
        w[rng.integers(d)] = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 5.0)
    else:
        w = rng.standard_normal(d) * rng.uniform(0.2, 5.0)
    w = torch.as_tensor(w)
    u = w / w.norm()
    t = torch.as_tensor(rng.uniform(-3.0, 3.0, 3)) / beta  # P(S < t) in [0.047, 0.953]
    x = torch.as_tensor(rng.standard_normal((3, d))) / beta
    x += (t - x @ u)[:, None] * u
    mean, se = t2.mc_gradient(x, w, beta, 20_000, torch.Generator().manual_seed(seed))
    reference = t2.exact_gradient(x, w, beta)
    if single or d == 1:
        torch.testing.assert_close(reference, t2.closed_form_gradient(x, w, beta), rtol=0, atol=1e-15)
    tested = w.expand_as(mean) != 0
    k = stats.norm.isf(1e-6 / (2 * int(tested.sum())))
    assert torch.all((mean - reference).abs()[tested] <= k * se[tested])
    assert torch.all(mean[~tested] == 0)


def direct_cdf_gap_two_weights(z, a):
    """D(z) for u = (a, sqrt(1 - a^2)) by a one-dimensional convolution integral (independent of the CF)."""
    b = math.sqrt(1.0 - a * a)
    integrand = lambda e: t2.logistic_density(e, 1.0) * special.expit((z - a * e) / b)
    return integrate.quad(integrand, -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13, limit=400)[0] - special.expit(z)


@settings(deadline=None, max_examples=25)
@given(a=st.floats(0.05, 0.99), z=st.floats(-10.0, 10.0))
def test_cdf_gap_matches_direct_convolution_for_two_weights(a, z):
    # Two independent computations of P(a e1 + b e2 < z) - sigmoid(z); both are accurate to ~1e-15.
    gap = t2.cdf_gap(np.array([z]), np.array([a, math.sqrt(1 - a * a)]))[0]
    assert gap == pytest.approx(direct_cdf_gap_two_weights(z, a), abs=1e-12)


@settings(deadline=None, max_examples=20)
@given(d=st.integers(1, 100), seed=st.integers(0, 2 ** 31 - 1), scale=log_uniform)
def test_cdf_gap_symmetries(d, seed, scale):
    # D is odd in z, depends on w only through the multiset {|u_i|}, and vanishes for one non-zero weight.
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    z = rng.uniform(-6.0, 6.0, 7)
    gap = t2.cdf_gap(z, w)
    np.testing.assert_allclose(t2.cdf_gap(-z, w), -gap, rtol=0, atol=1e-15)
    flipped = w[rng.permutation(d)] * rng.choice([-1.0, 1.0], d) * scale
    np.testing.assert_allclose(t2.cdf_gap(z, flipped), gap, rtol=0, atol=1e-15)
    one_hot = np.zeros(d)
    one_hot[rng.integers(d)] = scale
    assert np.all(t2.cdf_gap(z, one_hot) == 0.0)


def test_cdf_gap_tends_to_the_gaussian_limit():
    # CLT: for equal weights the projection tends to the variance-matched Gaussian, with an O(1/d) error.
    limit, _ = t2.gaussian_limit_gap()
    errors = [limit - t2.max_cdf_gap(np.ones(d))[0] for d in (10, 100, 1000)]
    assert 0 < errors[2] < errors[1] < errors[0]
    assert errors[2] < 1e-4


@settings(deadline=None, max_examples=8)
@given(sigma=st.floats(1.0, 3.0))
def test_smoothgrad_distances_obey_tv_bounds(sigma):
    # |E_p f - E_q f| <= TV for f in [0, 1] (here f = relu'(x - .)), and Pinsker TV <= sqrt(KL / 2).
    dist = t2.smoothgrad_distances(sigma)
    assert dist["tv"] == pytest.approx(dist["tv_by_quad"], abs=1e-8)
    assert dist["sup_smoothed_gradient_diff"] <= dist["tv"]
    assert dist["tv"] <= math.sqrt(min(dist["kl_logistic_gaussian"], dist["kl_gaussian_logistic"]) / 2)


def test_paper_sigma_matches_softplus_at_zero():
    # sigma = log(2) sqrt(2 pi) / beta is the Gaussian whose smoothed relu equals softplus_beta(0) = log(2) / beta.
    smoothed = t2.smoothgrad_distances(t2.PAPER_SIGMA)["gaussian_smoothed_relu_at_0"]
    assert smoothed == pytest.approx(math.log(2), abs=1e-12)


# ---- the check must be able to fail --------------------------------------------------------------------------
def test_quadrature_check_fails_for_misscaled_beta_and_wrong_density():
    assert t2.check_one_d_quadrature(np.random.default_rng(0), 20)[0].passed
    assert not t2.check_one_d_quadrature(np.random.default_rng(0), 20, analytic=misscaled_gradient)[0].passed
    assert not t2.check_one_d_quadrature(np.random.default_rng(0), 20, density=gaussian_density)[0].passed


def test_monte_carlo_check_fails_for_misscaled_beta():
    # random_cases draws |w| log-uniform in [0.2, 5], so the mis-scaled beta is off by far more than k SE.
    cases = t2.random_cases(np.random.default_rng(1), 8, 5, single_weight=True)
    good = t2.check_single_weight(cases, 20_000, torch.Generator().manual_seed(1))[0]
    bad = t2.check_single_weight(cases, 20_000, torch.Generator().manual_seed(1), analytic=misscaled_gradient)[0]
    assert good.passed and not bad.passed
    assert bad.numbers["max_abs_z"] > bad.tolerance > good.numbers["max_abs_z"]


def test_monte_carlo_check_fails_for_gaussian_noise_of_the_same_variance():
    # At beta t = 1.24 the Gaussian's CDF differs from the logistic's by 0.0227; 2e5 draws give SE ~ 1e-3,
    # so the check resolves the wrong density (~20 SE) although mean and variance are right.
    w = torch.tensor([2.0], dtype=torch.float64)
    cases = [t2.Case(w, torch.tensor([[1.24], [-1.24]], dtype=torch.float64), 1.0)]
    logistic = t2.check_single_weight(cases, 200_000, torch.Generator().manual_seed(0))[0]
    gaussian = t2.check_single_weight(cases, 200_000, torch.Generator().manual_seed(0), sampler=gaussian_sampler)[0]
    assert logistic.passed and not gaussian.passed


def test_approximation_check_fails_if_the_closed_form_were_exact_for_dense_weights():
    # Feeding the exact expectation as "eq. (21)" removes the gap the check must resolve, so it fails.
    args = (np.random.default_rng(0), (10, 100), 50_000, 2)
    honest = t2.check_approximation_error(*args, torch.Generator().manual_seed(0))[0]
    pretended = t2.check_approximation_error(*args, torch.Generator().manual_seed(0), analytic=t2.exact_gradient)[0]
    assert honest.passed and not pretended.passed
