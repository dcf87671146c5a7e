"""The per-segment test of Theorem 1's first inequality (paper eq. 3; proof step 4, supplement eqs. 16-19).

For a segment [p_i, p_{i+1}] of a curve on S, the proof integrates D_u n along the curve, so

    |n(p_{i+1}) - n(p_i)| <= sup |kappa_max| x (arc length)  >=  kappa_bar_i l_i,

with kappa_bar_i the largest |kappa_max| sampled on the segment and l_i the length of the polyline
through its samples on S (both LOWER estimates, so a violation may be a sampling artefact). A segment
whose ratio r_i = |n(p_{i+1}) - n(p_i)| / (kappa_bar_i l_i) exceeds 1 is subdivided: the worst
sub-intervals (by their own ratio) are split, the new points projected onto S and measured, up to
REFINE_ROUNDS rounds. Then each segment is

* PASS: r_i <= 1 + REL_TOL;
* EXEMPT: r_i > 1 + REL_TOL but a max-pool selection changes inside the segment (the twin, which keeps
  its max pools, is not C^2 there; Theorem 1 is stated for softplus networks);
* FAIL: r_i > 1 + REL_TOL with no max-pool switch.

Since |n(p) - n(q)| <= 2 for unit normals, a segment with kappa_bar l >= 2 passes whatever the
curvature: it is counted as trivial, and so is one with kappa_bar l < ABS_TOL (rounding decides it); the
others are the informative tests.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from theory_checks.theorem1.sampling import (LEVEL_TOL, CurveOnS, pool_selections, sample_on_level_set,
                                             top_curvature)

REL_TOL = 1e-5          # r_i <= 1 + REL_TOL; see TOLERANCE_RULE
ABS_TOL = 1e-12         # plus this absolute slack: float64 rounding of |n(p_(i+1)) - n(p_i)| of unit normals
TRIVIAL = 2.0           # kappa_bar l >= 2 cannot fail: |n(p) - n(q)| <= 2
REFINE_ROUNDS = 3       # subdivision rounds of a failing segment
REFINE_WORST = 2        # sub-intervals split per failing segment and round
REFINE_SPLIT = 4        # each split into this many parts (REFINE_SPLIT - 1 new samples)

TOLERANCE_RULE = (
    f"|n(p_(i+1)) - n(p_i)| <= kappa_bar_i l_i (1 + {REL_TOL:g}) + {ABS_TOL:g}. Arithmetic is float64 (relative rounding "
    "~1e-13 in n, lengths and norms; the absolute term covers the rounding of the difference of two unit normals); the Lanczos |kappa_max| is a Ritz value below the true value by at most its "
    "relative residual (<= 1e-7); points are on S to |g - c| <= 1e-9 max(1, |c|). The sampling errors (max over "
    "samples <= sup, polyline <= arc length) are not absorbed by the tolerance: failing segments are subdivided up "
    f"to {REFINE_ROUNDS} rounds ({REFINE_WORST} worst sub-intervals split in {REFINE_SPLIT} per round).")


def _sub_intervals(curve: CurveOnS) -> dict[str, torch.Tensor]:
    """Per sub-interval (consecutive samples k, k+1): segment id, length, turn, kappa bound, level error."""
    s = curve.samples
    pts = s.points.flatten(1)
    length = (pts[1:] - pts[:-1]).norm(dim=1)
    turn = (s.normals[1:] - s.normals[:-1]).norm(dim=1)
    kappa = torch.maximum(s.kappa[1:], s.kappa[:-1])
    knots = curve.knots
    seg = torch.searchsorted(knots, torch.arange(len(length), device=knots.device), right=True) - 1
    return dict(seg=seg, length=length, turn=turn, kappa=kappa, residual=torch.maximum(
        s.kappa_residual[1:], s.kappa_residual[:-1]), level=torch.maximum(s.level_error[1:], s.level_error[:-1]),
        ratio=turn / (kappa * length).clamp_min(torch.finfo(length.dtype).tiny))


def _per_segment(values: torch.Tensor, seg: torch.Tensor, count: int, reduce: str) -> torch.Tensor:
    out = torch.zeros(count, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, seg, values, reduce=reduce, include_self=False)


def segment_rows(curve: CurveOnS, twin: nn.Module | None = None, rel_tol: float = REL_TOL) -> list[dict]:
    """One row per segment of ``curve`` (between its original points): the two sides, ratio, whether it is
    informative, the max-pool switches inside it (``twin`` given) and the verdict."""
    sub = _sub_intervals(curve)
    knots = curve.knots
    count = len(knots) - 1
    s = curve.samples
    length = _per_segment(sub["length"], sub["seg"], count, "sum")
    kappa_bar = _per_segment(sub["kappa"], sub["seg"], count, "amax")
    level = _per_segment(sub["level"], sub["seg"], count, "amax")
    residual = _per_segment(sub["residual"], sub["seg"], count, "amax")
    a, b = knots[:-1], knots[1:]
    dn = s.normals[b] - s.normals[a]
    chord = s.points.flatten(1)[b] - s.points.flatten(1)[a]
    turn = dn.norm(dim=1)
    along = ((dn * chord).sum(1) / chord.norm(dim=1).clamp_min(torch.finfo(chord.dtype).tiny)).abs()
    rhs = kappa_bar * length
    ratio = turn / rhs.clamp_min(torch.finfo(rhs.dtype).tiny)
    switches = [None] * count
    selections = pool_selections(twin, s.points) if twin is not None else None
    if selections is not None:
        per_sub = sum((idx[1:] != idx[:-1]).sum(1) for idx in selections)
        switches = _per_segment(per_sub.to(length), sub["seg"], count, "sum").long().tolist()
    samples = (b - a + 1).tolist()
    on_s = (level <= LEVEL_TOL * max(1.0, abs(curve.level))).tolist()
    columns = dict(length=length, chord=chord.norm(dim=1), turn=turn, turn_along=along, kappa_bar=kappa_bar,
                   kappa_start=s.kappa[a], rhs=rhs, ratio=ratio, level_error=level, kappa_residual=residual)
    columns = {k: v.tolist() for k, v in columns.items()}
    rows = []
    for j in range(count):
        row = dict(label=curve.label, beta=curve.beta, kind=curve.kind, image=curve.image, cls=curve.cls,
                   scale=curve.notes.get("scale", math.nan), start=curve.notes.get("start", ""), segment=j,
                   samples=samples[j],
                   **{k: v[j] for k, v in columns.items()}, pool_switches=switches[j], on_level_set=on_s[j],
                   refined=curve.notes.get("refined", {}).get(j, 0))
        row["informative"] = ABS_TOL <= row["rhs"] < TRIVIAL
        row["verdict"] = verdict(row, rel_tol)
        rows.append(row)
    return rows


def exceeds(turn: float, rhs: float, rel_tol: float = REL_TOL) -> bool:
    """Whether a segment's turn of the normal exceeds kappa_bar l beyond the tolerance."""
    return turn > rhs * (1 + rel_tol) + ABS_TOL


def verdict(row: dict, rel_tol: float = REL_TOL) -> str:
    """PASS, FAIL or EXEMPT (see the module docstring); OFF_S when the samples are not on S to LEVEL_TOL."""
    if not row["on_level_set"]:
        return "OFF_S"
    if not exceeds(row["turn"], row["rhs"], rel_tol):
        return "PASS"
    return "EXEMPT" if row["pool_switches"] else "FAIL"


def refine(curves: list[CurveOnS], twin: nn.Module, rounds: int = REFINE_ROUNDS, worst: int = REFINE_WORST,
           split: int = REFINE_SPLIT, curvature=top_curvature, rel_tol: float = REL_TOL) -> int:
    """Subdivide every segment whose ratio exceeds 1 + rel_tol: its ``worst`` sub-intervals (largest own
    ratio) are split in ``split`` parts, the new points projected onto S and measured; ``rounds`` times.
    Returns the number of new samples. Each curve's notes['refined'] counts the rounds per segment."""
    added = 0
    for _ in range(rounds):
        work = []
        for curve in curves:
            sub = _sub_intervals(curve)
            rows = segment_rows(curve, None, rel_tol)
            failing = [r["segment"] for r in rows if exceeds(r["turn"], r["rhs"], rel_tol)]
            refined = curve.notes.setdefault("refined", {})
            for j in failing:
                refined[j] = refined.get(j, 0) + 1
                idx = torch.nonzero(sub["seg"] == j).flatten()
                pick = idx[torch.argsort(sub["ratio"][idx], descending=True)[:worst]]
                t = torch.arange(1, split, dtype=curve.s.dtype, device=curve.s.device) / split
                for k in pick.tolist():
                    pa, pb = curve.samples.points[k], curve.samples.points[k + 1]
                    work += [(curve, curve.s[k] + tj * (curve.s[k + 1] - curve.s[k]), pa + tj.to(pa) * (pb - pa))
                             for tj in t]
        if not work:
            break
        x = torch.stack([w[2] for w in work])
        classes = torch.tensor([w[0].cls for w in work], device=x.device)
        levels = torch.tensor([w[0].level for w in work], dtype=x.dtype, device=x.device)
        new = sample_on_level_set(twin, x, classes, levels, curvature)
        added += len(work)
        for curve in dict.fromkeys(w[0] for w in work):
            idx = [j for j, w in enumerate(work) if w[0] is curve]
            curve.insert(torch.stack([work[j][1] for j in idx]), new.take(torch.tensor(idx, device=x.device)))
    return added


def curve_row(curve: CurveOnS) -> dict:
    """The whole curve: |n(p_T) - n(p_0)| against max sampled |kappa| x length on S (also its chord)."""
    s = curve.samples
    pts = s.points.flatten(1)
    length = float((pts[1:] - pts[:-1]).norm(dim=1).sum())
    lhs = float((s.normals[-1] - s.normals[0]).norm())
    kappa_max = float(s.kappa.max())
    return dict(label=curve.label, beta=curve.beta, kind=curve.kind, image=curve.image, cls=curve.cls,
                level=curve.level, scale=curve.notes.get("scale", math.nan), points=len(pts),
                initial_points=len(curve.knot_s), lhs=lhs, kappa_max=kappa_max, length=length,
                euclidean=float((pts[-1] - pts[0]).norm()), rhs=kappa_max * length,
                slack=kappa_max * length / lhs if lhs > 0 else math.inf,
                holds=not exceeds(lhs, kappa_max * length), informative=ABS_TOL <= kappa_max * length < TRIVIAL,
                min_grad_norm=float(s.grad_norm.min()), on_level_set=curve.on_level_set(),
                max_kappa_residual=float(s.kappa_residual.max()),
                **{k: curve.notes.get(k, math.nan) for k in ("geodesic_level_error", "geodesic_length")})


def summarise(rows: list[dict]) -> dict:
    """Counts of the segment tests (PASS or FAIL; EXEMPT and OFF_S segments are counted apart, they test
    nothing), of the informative ones (kappa_bar l < 2) and their ratio distribution (median, 90th and 99th
    percentile, maximum)."""
    tests = [r for r in rows if r["verdict"] in ("PASS", "FAIL")]
    informative = [r for r in tests if r["informative"]]
    ratio = np.array([r["ratio"] for r in informative])
    pct = (lambda q: float(np.percentile(ratio, q))) if ratio.size else (lambda q: math.nan)
    switches = [r["pool_switches"] for r in rows if r["pool_switches"] is not None]
    return dict(segments=len(rows), tests=len(tests), off_level_set=sum(r["verdict"] == "OFF_S" for r in rows),
                informative=len(informative), trivial=len(tests) - len(informative),
                informative_fraction=len(informative) / len(tests) if tests else math.nan,
                passed=sum(r["verdict"] == "PASS" for r in tests), failed=sum(r["verdict"] == "FAIL" for r in tests),
                exempt=sum(r["verdict"] == "EXEMPT" for r in rows),
                informative_failed=sum(r["verdict"] == "FAIL" for r in informative),
                refined=sum(r.get("refined", 0) > 0 for r in rows),
                segments_with_pool_switch=sum(1 for s in switches if s), pool_switches=int(sum(switches)),
                ratio_median=pct(50), ratio_p90=pct(90), ratio_p99=pct(99),
                ratio_max=float(ratio.max()) if ratio.size else math.nan)
