"""Sixt et al. (2020) Appendix B, Figure 7: how fast a chain of random matrices becomes rank one.

A backward pass multiplies the relevance vector by one matrix per layer, r_{k} = A_k r_{k-1}. Two
random vectors pushed through the same chain point in the same direction once the product
A_k ... A_1 is (numerically) rank one. The simulation draws i.i.d. n x n layer matrices of one kind
and records 1 - median |cos| between the propagated vectors after every layer:

* ``gaussian``: W_ij ~ N(0, 1) (the paper's "vanilla"); does not converge.
* ``gaussian_relu``: the same with a ReLU after every multiplication.
* ``nonneg_50``: max(W, 0), half of the entries zero.
* ``positive``: |W|.
* ``alpha_beta``: alpha W+ - beta W-, W+ = max(W, 0), W- = max(-W, 0), beta = alpha - 1 (LRP_ab).

Non-negative chains converge exponentially (Appendix B, eq. 36: 1 - s_n <= (1 - lambda)^n (1 - s_0)),
so log(1 - median cos) falls linearly with depth; :func:`fit_log_decay` measures that slope.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geomexpl.sanity.convergence import one_minus_abs_cosine

KINDS = ("gaussian", "gaussian_relu", "nonneg_50", "positive", "alpha_beta")


def layer_matrices(kind: str, shape: tuple[int, ...], alpha: float | None = None,
                   generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                   device=None) -> torch.Tensor:
    """Random layer matrices of ``kind`` (see the module docstring) built from W ~ N(0, 1) of ``shape``."""
    if kind not in KINDS:
        raise ValueError(f"unknown matrix kind {kind!r}; choose one of {KINDS}")
    if (kind == "alpha_beta") != (alpha is not None):
        raise ValueError(f"alpha is required for kind 'alpha_beta' and only for it, got kind {kind!r}, alpha={alpha}")
    if alpha is not None and alpha < 1:
        raise ValueError(f"alpha must be >= 1 (beta = alpha - 1 >= 0), got {alpha}")
    gen_device = generator.device if generator is not None else device
    w = torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)
    if kind == "nonneg_50":
        return w.clamp_min(0)
    if kind == "positive":
        return w.abs()
    if kind == "alpha_beta":
        return alpha * w.clamp_min(0) - (alpha - 1) * (-w).clamp_min(0)
    return w


@dataclass(frozen=True)
class LogDecayFit:
    """Least-squares line log(y) = intercept + slope * depth and its coefficient of determination."""

    slope: float
    intercept: float
    r2: float
    points: int


@dataclass(frozen=True)
class ChainConvergence:
    """1 - median |cos| between the propagated vectors after each of ``depths`` layers."""

    kind: str
    alpha: float | None
    n: int
    depths: np.ndarray  # [depth]: 1, 2, ..., depth
    one_minus_median_cos: np.ndarray  # [depth]
    gaps: np.ndarray  # [depth, pairs]: 1 - |cos| of every pair of vectors in every chain

    def fit(self, floor: float = 1e-25) -> LogDecayFit:
        """:func:`fit_log_decay` of this chain's 1 - median cos."""
        return fit_log_decay(self.depths, self.one_minus_median_cos, floor)


def fit_log_decay(depths, values, floor: float = 1e-25) -> LogDecayFit:
    """Fit log(values) = intercept + slope * depth over the entries above ``floor``.

    An exponential decay 1 - cos ~ exp(-lambda n) gives slope -lambda and r2 near 1. Entries at or
    below ``floor`` (converged to working precision) are left out; at least three must remain.
    """
    depths = np.asarray(depths, dtype=float).ravel()
    values = np.asarray(values, dtype=float).ravel()
    if depths.shape != values.shape:
        raise ValueError(f"depths and values must have one length, got {depths.size} and {values.size}")
    keep = np.isfinite(values) & (values > floor)
    if keep.sum() < 3:
        raise ValueError(f"fit_log_decay needs at least 3 values above floor={floor:g}, got {int(keep.sum())}")
    x, y = depths[keep], np.log(values[keep])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (residual ** 2).sum() / total if total > 0 else 1.0
    return LogDecayFit(float(slope), float(intercept), float(r2), int(keep.sum()))


def matrix_chain_convergence(kind: str, depth: int = 20, n: int = 64, n_vectors: int = 5, *,
                             alpha: float | None = None, chains: int = 4,
                             generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                             device=None) -> ChainConvergence:
    """Simulate Sixt et al.'s Figure 7: ``chains`` independent chains of ``depth`` i.i.d. n x n
    matrices of ``kind``, each applied to ``n_vectors`` random N(0, I) vectors.

    After layer k the vectors are V_k = A_k V_{k-1} (ReLU'd for ``gaussian_relu``), rescaled to unit
    norm (the cosine ignores scale). 1 - |cos| is computed as min |a^ -+ b^|^2 / 2 of the unit
    vectors, which stays accurate far below float epsilon, so the exponential decay can be followed
    until the vectors agree to working precision. The median is over all pairs of all chains.
    """
    if depth < 1 or n < 2 or n_vectors < 2 or chains < 1:
        raise ValueError(f"need depth >= 1, n >= 2, n_vectors >= 2, chains >= 1; got depth={depth}, n={n}, "
                         f"n_vectors={n_vectors}, chains={chains}")
    gen_device = generator.device if generator is not None else device
    v = torch.randn(chains, n, n_vectors, generator=generator, dtype=dtype, device=gen_device).to(device)
    i, j = torch.triu_indices(n_vectors, n_vectors, offset=1, device=v.device)
    gaps = []
    for _ in range(depth):
        v = layer_matrices(kind, (chains, n, n), alpha, generator, dtype, device) @ v
        if kind == "gaussian_relu":
            v = v.clamp_min(0)
        v = v / v.norm(dim=1, keepdim=True)
        gaps.append(one_minus_abs_cosine(v[:, :, i], v[:, :, j], dim=1).flatten())
    gaps = torch.stack(gaps).cpu().numpy()
    return ChainConvergence(kind, alpha, n, np.arange(1, depth + 1), np.nanmedian(gaps, axis=1), gaps)
