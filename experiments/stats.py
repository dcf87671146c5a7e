"""The project's statistics: bootstrap confidence intervals of medians and the one verdict rule.

Every number the report compares with a threshold is a median (or a median of paired differences,
or a rate) with a percentile-bootstrap 95% confidence interval over the examples. The verdict rule,
the same for every claim:

* **agree**: the whole interval lies on the side of the threshold that the paper's claim predicts;
* **disagree**: the whole interval lies on the other side;
* **inconclusive**: the interval contains the threshold, or there are fewer than ``MIN_N``
  examples (too few for an interval).

A claim made of several parts agrees when every part agrees and disagrees when any part disagrees.
The thresholds are ours (the papers show box plots, not thresholds), except Sixt et al.'s |cos| 0.99.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
MIN_N = 5
SEED = 0

THRESHOLDS = {  # name: (value, what it separates); the only thresholds any verdict uses
    "map_pcc": (0.7, "PCC(h_adv, h_t): the manipulated map follows the target"),
    "image_ssim": (0.8, "SSIM(x_adv, x): the perturbation is small"),
    "class_kept": (0.9, "rate of examples whose class is kept"),
    "softmax_change": (1e-2, "|g(x_adv) - g(x)|: the output barely moves"),
    "difference": (0.0, "a paired difference: one arm above the other"),
    "csc": (0.99, "median |cos| of propagated random relevance vectors: converged (Sixt et al. sec. 4)"),
    "chance_cosine": (2.0, "|cos| in units of the |cos| of random directions: orthogonal up to chance"),
    "spearman": (0.0, "Spearman's rho of a quantity against a setting: it grows (above) or falls (below)"),
}
VERDICTS = ("agree", "disagree", "inconclusive", "not run")


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap confidence interval over ``n`` examples (NaN bounds when n < MIN_N)."""

    estimate: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if not np.isfinite(self.low):
            return f"{self.estimate:.3g} (n={self.n}, too few for an interval)"
        return f"{self.estimate:.3g} (95% CI {self.low:.3g} to {self.high:.3g}, n={self.n})"


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v)]


def bootstrap(values, statistic=np.median, *, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """``statistic`` of the finite values with its percentile-bootstrap interval (examples resampled)."""
    v = _finite(values)
    if not v.size:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    estimate = float(statistic(v))
    if v.size < MIN_N:
        return Interval(estimate, float("nan"), float("nan"), int(v.size))
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    stats = statistic(v[idx], axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), int(v.size))


def median_ci(values) -> Interval:
    """The median with its bootstrap 95% interval."""
    return bootstrap(values, np.median)


def rate_ci(values) -> Interval:
    """The mean (of 0/1 values: a rate) with its bootstrap 95% interval."""
    return bootstrap(values, np.mean)


def paired_difference(a, b, statistic=np.median) -> Interval:
    """``statistic`` (median) of the per-example differences a - b, by a paired bootstrap (the
    examples are resampled, each with both of its values)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same examples, got shapes {a.shape} and {b.shape}")
    return bootstrap(a - b, statistic)


def spearman_ci(x, y, *, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """Spearman's rho of the points (x_i, y_i) with a paired percentile-bootstrap interval (points
    resampled with both coordinates; resamples where x or y is constant are dropped)."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman_ci needs two 1-d arrays of one length, got shapes {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]

    def rho(a, b):  # rows of a and b: resamples; Pearson's r of the ranks
        ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
        ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (ra * rb).sum(-1) / np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))

    if x.size < 2:
        return Interval(float("nan"), float("nan"), float("nan"), int(x.size))
    estimate = float(rho(x, y))
    if x.size < MIN_N:
        return Interval(estimate, float("nan"), float("nan"), int(x.size))
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    stats = rho(x[idx], y[idx])
    stats = stats[np.isfinite(stats)]
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), int(x.size))


def threshold(name: str) -> float:
    if name not in THRESHOLDS:
        raise KeyError(f"no threshold {name!r}; declared: {', '.join(THRESHOLDS)}")
    return THRESHOLDS[name][0]


def verdict(interval: Interval, name: str, above: bool = True) -> str:
    """The verdict rule for a claim that predicts the value lies above (``above``) or below the
    threshold ``name`` of :data:`THRESHOLDS`."""
    t = threshold(name)
    if interval.n < MIN_N or not np.isfinite(interval.low):
        return "inconclusive"
    if interval.low > t:
        return "agree" if above else "disagree"
    if interval.high < t:
        return "disagree" if above else "agree"
    return "inconclusive"


def combine(verdicts) -> str:
    """A claim of several parts: agree if all agree, disagree if any disagrees, else inconclusive."""
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("combine needs at least one verdict")
    if "disagree" in verdicts:
        return "disagree"
    return "agree" if all(v == "agree" for v in verdicts) else "inconclusive"


def percentiles(values) -> str:
    """'10th-90th percentile a to b' of the finite values (a description of the spread, not an interval)."""
    v = _finite(values)
    if not v.size:
        return "n/a"
    p10, p90 = np.percentile(v, [10, 90])
    return f"10th-90th percentile {p10:.3g} to {p90:.3g}"


def describe(values) -> str:
    """'median (95% CI ..., n=..); 10th-90th percentile ...' of the finite values."""
    v = _finite(values)
    return "n/a" if not v.size else f"{median_ci(v)}; {percentiles(v)}"


def rule_text() -> str:
    """The verdict rule and its thresholds, as written in the report."""
    rows = "; ".join(f"`{k}` {v:g} ({what})" for k, (v, what) in THRESHOLDS.items())
    return (f"Verdict rule (the project's own, one for every claim): each compared number is a median (a mean where "
            f"the text says so: rates, pixel-flipping areas), or the median of paired per-example differences, "
            f"with a percentile-bootstrap {CONFIDENCE:.0%} "
            f"confidence interval ({RESAMPLES} resamples of the examples, seed {SEED}). **agree** when the whole "
            f"interval lies on the side of the threshold that the paper's claim predicts, **disagree** when it lies "
            f"on the other side, **inconclusive** otherwise or with fewer than {MIN_N} examples; a claim of several "
            f"parts agrees only if every part agrees and disagrees if any part disagrees. Thresholds: {rows}.")
