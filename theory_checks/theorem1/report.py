"""Theorem 1 on the zoo's twins over beta, as a section of the theory-check report (``python -m theory_checks``).

Per model and beta: the per-segment test (counts of informative and trivial tests, FAIL / EXEMPT, ratio
percentiles of the informative ones), the bracket on sup |kappa| and the flatness of S along the attack
paths (geodesic length / chord). Each (model, beta) is saved under ``theorem1/parts/`` as soon as it is
measured, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from geomexpl import data, nets
from geomexpl.attack import explanation_target
from theory_checks.report import CheckResult, SubCheck, write_csv
from theory_checks.theorem1 import plots
from theory_checks.theorem1.api import SIZE, bracket_row, measure_at_beta, point_bound_violations
from theory_checks.theorem1.bracket import BOUND_TOL, theorem_constant
from theory_checks.theorem1.segments import (REFINE_ROUNDS, REFINE_SPLIT, REFINE_WORST, TOLERANCE_RULE, curve_row,
                                             segment_rows, summarise)

NAME = "theorem1"
MIN_INFORMATIVE = 0.8   # the check is meant to test something: >= 80% of its segment tests informative

QUICK = dict(archs=("mlp",), betas=(1.0, 5.0, 50.0), images=2,
             size=dict(attack_steps=40, max_points=13, geodesic_iters=10, tight_scales=(1e-3, 0.1, 1.0),
                       ascent_steps=2))
# sized for a shared 2-core CPU; betas in an order that spreads a partial (resumed) run over the whole range
FULL = dict(archs=("vgg", "resnet"), betas=(0.5, 50.0, 5.0, 2.0, 20.0, 1.0, 10.0), images=1,
            size=dict(max_points=13, segment_kl=0.8, tight_scales=(1e-3, 1e-2, 0.1, 1.0), ascent_steps=2,
                      geodesic_iters=8))
# check_model's defaults for keys its ``size`` leaves out (the demo's Theorem 1 step): no tight curves, no ascent
LEGACY = dict(SIZE, tight_scales=(), ascent_steps=0)


def pick_images(model, x_all: torch.Tensor, count: int, seed: int) -> tuple[list[int], torch.Tensor]:
    """``count`` seeded test images and the gradient maps of images of another predicted class (the targets)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        pred = model(x_all).argmax(1).cpu().numpy()
    chosen = rng.permutation(len(x_all))[:count].tolist()
    others = [int(rng.choice(np.flatnonzero(pred != pred[i]))) for i in chosen]
    return chosen, explanation_target(model, x_all[others], "gradient")


def measure_zoo(model, arch: str, beta: float, images: int, size: dict, seed: int, curvature=None) -> dict:
    """Segments, curves and bracket of one zoo model at one beta (plain data, JSON-ready)."""
    x_all = data.load("digits", "test")[0].to(next(model.parameters()).device)
    chosen, targets = pick_images(model, x_all, images, seed)
    x = x_all[chosen]
    with torch.no_grad():
        classes = model(x).argmax(1)
    generator = torch.Generator().manual_seed(seed)
    extra = {} if curvature is None else dict(curvature=curvature)
    measured = measure_at_beta(model, x, beta, classes, targets, chosen, {**SIZE, **size}, generator,
                               label=arch, **extra)
    constants = theorem_constant(model, tuple(x.shape[1:]))
    bracket = dict(label=arch, beta=beta, **bracket_row(measured, beta, constants),
                   point_bound_violations=point_bound_violations(measured, beta, constants),
                   c_tilde_frobenius=constants.frobenius, c_tilde_spectral=constants.spectral)
    return dict(segments=[r for c in measured["curves"] for r in segment_rows(c, measured["twin"])],
                curves=[curve_row(c) for c in measured["curves"]], bracket=bracket, note=constants.note)


def check_model(model, arch: str, size: dict, seed: int) -> list[dict]:
    """Per-curve rows (kind, lhs = |n(p) - n(p0)|, rhs = max|kappa| L, slack, holds, ...) of one zoo model over
    ``size['betas']``; keys of :data:`SIZE` missing from ``size`` take :data:`LEGACY` values."""
    rows = []
    for beta in size["betas"]:
        part = measure_zoo(model, arch, beta, size["images"], {**LEGACY, **{k: v for k, v in size.items()
                                                                         if k in SIZE}}, seed)
        rows += part["curves"]
    return rows


def run(out_dir: Path, quick: bool, seed: int, log=print, saved_only: bool = False,
        device: torch.device | str = "cpu") -> CheckResult:
    """Measure every (model, beta) not yet saved under ``out_dir/theorem1/parts``, then tables, plots, sub-checks.
    ``saved_only``: measure nothing, report the betas saved for every model (a partial run, stated as such)."""
    cfg = QUICK if quick else FULL
    folder = Path(out_dir) / NAME
    parts_dir = folder / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    options = dict(images=cfg["images"], size={**SIZE, **cfg["size"]}, seed=seed, refine=(REFINE_ROUNDS, REFINE_WORST,
                   REFINE_SPLIT))
    options = json.loads(json.dumps(options))
    parts, models = {}, {}
    for beta in cfg["betas"]:
        for arch in cfg["archs"]:
            path = parts_dir / f"{arch}-beta{beta:g}.json"
            if path.exists() and json.loads(path.read_text())["options"] == options:
                parts[arch, beta] = json.loads(path.read_text())
                continue
            if saved_only:
                continue
            if arch not in models:
                models[arch] = nets.pretrained(arch, "digits", progress=False).to(device)
            part = measure_zoo(models[arch], arch, beta, cfg["images"], cfg["size"], seed)
            part["options"] = options
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(part, default=_plain))
            tmp.replace(path)
            parts[arch, beta] = json.loads(path.read_text())
            log(f"  theorem1: {arch} beta {beta:g} measured")
    done = sorted(b for b in cfg["betas"] if all((a, b) in parts for a in cfg["archs"]))
    if not done:
        raise ValueError(f"no beta of {cfg['betas']} is saved for every model under {parts_dir}")
    missing = sorted(set(cfg["betas"]) - set(done))
    cfg = dict(cfg, betas=done, missing=missing)
    parts = {(a, b): parts[a, b] for a in cfg["archs"] for b in cfg["betas"]}
    return result_from_parts(parts, cfg, Path(out_dir), folder)


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def result_from_parts(parts: dict, cfg: dict, out_dir: Path, folder: Path) -> CheckResult:
    segments = [r for p in parts.values() for r in p["segments"]]
    curves = [r for p in parts.values() for r in p["curves"]]
    brackets = [p["bracket"] for p in parts.values()]
    tables = [write_csv(folder / f"{name}.csv", rows) for name, rows in
              (("segments", segments), ("curves", curves), ("bracket", brackets))]
    tables = [str(t.relative_to(out_dir)) for t in tables]
    figures = [plots.ratios(segments, folder / "segment_ratios.png"), plots.bracket(brackets, folder / "bracket.png")]
    subchecks = []
    for arch in cfg["archs"]:
        subchecks += [segment_subcheck(segments, arch, cfg["betas"]), bracket_subcheck(brackets, arch, cfg["betas"]),
                      flatness_subcheck(curves, segments, arch, cfg["betas"])]
    for sub in subchecks:
        sub.files += tables
    notes = {arch: next(p["note"] for (a, _), p in parts.items() if a == arch) for arch in cfg["archs"]}
    return CheckResult(NAME, "|n(p_(i+1)) - n(p_i)| <= kappa_bar_i l_i per segment; sup|kappa| bracketed by "
                       "gradient ascent and beta C~ / c (softplus twins)", _summary(segments, cfg, notes),
                       subchecks, tables + [str(f.relative_to(out_dir)) for f in figures])


def _by_beta(rows: list[dict], arch: str, betas) -> list[list[dict]]:
    return [[r for r in rows if r["label"] == arch and r["beta"] == b] for b in betas]


def segment_subcheck(segments: list[dict], arch: str, betas) -> SubCheck:
    per = [summarise(rows) for rows in _by_beta(segments, arch, betas)]
    total = summarise([r for r in segments if r["label"] == arch])
    numbers = {"betas": list(betas)}
    for key in ("tests", "informative", "informative_fraction", "failed", "exempt", "segments_with_pool_switch",
                "refined", "ratio_median", "ratio_p90", "ratio_p99", "ratio_max"):
        numbers[f"{key}_by_beta"] = [p[key] for p in per]
    numbers.update({f"all_{k}": total[k] for k in ("tests", "informative", "trivial", "failed", "exempt",
                                                   "off_level_set", "pool_switches", "ratio_median", "ratio_p99",
                                                   "ratio_max")})
    tight = [r for r in segments if r["label"] == arch and r["kind"] == "tight" and r["informative"]
             and r["verdict"] in ("PASS", "FAIL")]
    numbers["tight_ratio_median"] = float(np.median([r["ratio"] for r in tight])) if tight else math.nan
    low = [b for b, p in zip(betas, per) if not p["informative_fraction"] >= MIN_INFORMATIVE]
    passed = total["failed"] == 0 and not low and total["informative"] > 0
    text = (f"{total['tests']} segment tests, {total['informative']} informative (kappa_bar l < 2) and "
            f"{total['trivial']} trivial; {total['failed']} FAIL, {total['exempt']} EXEMPT (max-pool switch inside a "
            f"failing segment), {total['off_level_set']} not on S. Ratio of the informative tests: median "
            f"{total['ratio_median']:.3g}, p99 {total['ratio_p99']:.4g}, max {total['ratio_max']:.4g}; along the top "
            f"principal direction (tight) the median is {numbers['tight_ratio_median']:.4g}.")
    if low:
        text += f" Fewer than {MIN_INFORMATIVE:.0%} informative tests at beta {low}: the check tests too little there."
    if total["failed"]:
        worst = max((r for r in segments if r["label"] == arch and r["verdict"] == "FAIL"), key=lambda r: r["ratio"])
        text += (f" Worst FAIL: beta {worst['beta']:g}, {worst['kind']} from image {worst['image']}, segment "
                 f"{worst['segment']}: turn {worst['turn']:.4g} > kappa_bar l {worst['rhs']:.4g} after "
                 f"{worst['refined']} subdivision round(s).")
    return SubCheck(
        name=f"segments_{arch}",
        measured=(f"{arch}: every segment [p_i, p_(i+1)] of every curve on S (attack paths, random curves, geodesics, "
                  "tight segments along the top principal direction and short ones in random tangent directions at "
                  "kappa l from 1e-3 to 1): |n(p_(i+1)) - n(p_i)| against kappa_bar_i l_i (largest sampled "
                  "|kappa_max| on the segment x its length on S), failing segments subdivided."),
        numbers=numbers, tolerance=1e-5, tolerance_rule=TOLERANCE_RULE + (
            f" PASS: no FAIL and, at every beta, at least {MIN_INFORMATIVE:.0%} of the tests informative."),
        passed=passed, explanation=text)


def bracket_subcheck(brackets: list[dict], arch: str, betas) -> SubCheck:
    rows = [next(iter(r), None) for r in _by_beta(brackets, arch, betas)]
    rows = [r for r in rows if r is not None]
    numbers = {"betas": [r["beta"] for r in rows], "radius_by_beta": [r["radius"] for r in rows]}
    for key in ("lower_sampled", "lower_ascent", "lower", "c_min_grad", "upper_frobenius", "upper_spectral",
                "factor_frobenius", "factor_spectral", "point_bound_violations"):
        numbers[f"{key}_by_beta"] = [r.get(key) for r in rows]
    numbers["ascent_gain_median_by_beta"] = [r.get("ascent_gain_median") for r in rows]
    failed = [r for r in rows if r.get("holds_bound") is False or r["point_bound_violations"]]
    text = " ".join(f"beta {r['beta']:g}: [{r['lower']:.3g}, {r['upper_spectral']:.3g}] (factor "
                    f"10^{math.log10(r['factor_spectral']):.1f} spectral" + (
                        f", 10^{math.log10(r['factor_frobenius']):.1f} eq. 10)" if r["upper_frobenius"] ==
                        r["upper_frobenius"] else ")") + ";" for r in rows)
    return SubCheck(
        name=f"bracket_{arch}",
        measured=(f"{arch}: sup |kappa_max| on S within the attack's median |delta|_2 of the test images. Lower end: "
                  "the largest Lanczos |kappa_max| met there (curve samples, and projected gradient ascent on "
                  "|kappa_max| from the test images and attack-path points). Upper end: beta C~ / c, c the smallest "
                  "|grad g| met there, C~ of eq. (10) (Frobenius, where defined) and the spectral graph bound."),
        numbers=numbers, tolerance=BOUND_TOL,
        tolerance_rule=("Relative, float64 rounding of products of norms. PASS: lower <= upper for every norm and "
                        "|kappa_max| <= beta C~ / |grad g| at every sampled point (eq. 15 with c at the point)."),
        passed=not failed and bool(rows), explanation="Bracket on sup |kappa|, " + text)


def flatness_subcheck(curves: list[dict], segments: list[dict], arch: str, betas) -> SubCheck:
    geo = _by_beta([c for c in curves if c["kind"] == "geodesic" and c["on_level_set"]], arch, betas)
    att = _by_beta([c for c in curves if c["kind"] == "attack" and c["on_level_set"]], arch, betas)
    seg = _by_beta([s for s in segments if s["kind"] == "attack" and s["turn"] > 0], arch, betas)
    rnd = [s for s in segments if s["label"] == arch and s["kind"] == "random" and s["turn"] > 0]
    med = lambda v: float(np.median(v)) if len(v) else math.nan   # noqa: E731
    numbers = {"betas": list(betas),
               "geodesic_over_chord_median_by_beta": [med([c["length"] / c["euclidean"] for c in g]) for g in geo],
               "geodesic_over_chord_max_by_beta": [max((c["length"] / c["euclidean"] for c in g), default=math.nan)
                                                   for g in geo],
               "attack_on_S_over_chord_median_by_beta": [med([c["length"] / c["euclidean"] for c in a]) for a in att],
               "chord_median_by_beta": [med([c["euclidean"] for c in a]) for a in att],
               "normal_turn_median_by_beta": [med([c["lhs"] for c in a]) for a in att],
               "kappa_times_geodesic_length_median_by_beta": [med([c["rhs"] for c in g]) for g in geo],
               "bending_fraction_median_by_beta": [med([s["turn_along"] / s["turn"] for s in g]) for g in seg],
               "bending_fraction_random_curves_median": med([s["turn_along"] / s["turn"] for s in rnd])}
    all_geo = [c for g in geo for c in g]
    raw_errors = [c.get("geodesic_level_error", math.nan) for c in all_geo]
    ratio = [c["length"] / c["euclidean"] for c in all_geo]
    passed = bool(all_geo) and min(ratio) >= 1 - 1e-9
    text = (f"The shortened geodesics between the attack's end points are at most {max(ratio):.5g} times the chord "
            f"|p - p0| (median {med(ratio):.5g}), so d_g / |p - p0| lies in [1, {max(ratio):.5g}]: at the attack's "
            "scale S is flat along the path in the sense that a straight chord is (almost) a curve on S. Yet the "
            f"normal turns by {med([c['lhs'] for a in att for c in a]):.3g} (median |n(p) - n(p0)|). Only a fraction "
            f"{med([s['turn_along'] / s['turn'] for g in seg for s in g]):.3g} (median over attack segments; "
            f"{numbers['bending_fraction_random_curves_median']:.3g} on the random curves) of a segment's turn of the "
            "normal lies along its step direction (the normal curvature, which bends the path); the rest turns the "
            "normal sideways (off-diagonal terms of the shape operator) and changes the explanation without bending "
            f"the path. Along the geodesics, max sampled |kappa_max| x length (a lower estimate of the theorem's "
            f"|lambda_max| d_g up to the factor {max(ratio):.5g} between length and d_g) is {min(c['rhs'] for c in all_geo):.3g} to {max(c['rhs'] for c in all_geo):.3g}: "
            "where it is 2 or more the theorem cannot constrain the explanation at the attack's scale. Raw geodesic "
            f"level error at most {max(raw_errors):.2g}.")
    return SubCheck(
        name=f"flatness_{arch}",
        measured=(f"{arch}: along the attack paths, length of the shortened geodesic / chord |p - p0| (an upper "
                  "estimate of d_g / |p - p0|), the attack path's length on S / chord, the turn of the normal and "
                  "the part of each segment's turn along its step direction |(n_(i+1) - n_i) . t| / |n_(i+1) - n_i|."),
        numbers=numbers, tolerance=None,
        tolerance_rule="A measurement. PASS when geodesics exist on S and are never shorter than their chord.",
        passed=passed, explanation=text)


def _summary(segments: list[dict], cfg: dict, notes: dict) -> str:
    size = {**SIZE, **cfg["size"]}
    kinds = {k: len({(r["label"], r["beta"], r["image"], r["scale"], r["start"]) for r in segments if r["kind"] == k})
             for k in ("attack", "random", "geodesic", "tight", "short")}
    text = (f"Models {', '.join(cfg['archs'])} (softplus twins of the zoo's digits models, float64), beta in "
            f"{list(cfg['betas'])}, {cfg['images']} test images per beta. Curves per model and beta: attack paths "
            f"({size['attack_steps']} Adam steps at lr {size['lr']:g}), random curves of the attack's reach (at "
            f"most {(size['max_points'] - 1) * size['segment_kl'] / 1.5:.3g} / kappa(p0)) and the shortened geodesics "
            f"between the attack's end points, each with {size['min_points']} to {size['max_points']} points (enough "
            f"for kappa(p0) x segment length ~ {size['segment_kl']:g} where the cap allows), and "
            f"tight/short segments at kappa l in {list(size['tight_scales'])}; in all {kinds['attack']} attack paths, "
            f"{kinds['random']} random curves, {kinds['geodesic']} geodesics, {kinds['tight']} tight and "
            f"{kinds['short']} short segments. Every segment is a test; failing ones are subdivided up to "
            f"{REFINE_ROUNDS} rounds. The ascent takes {size['ascent_steps']} steps from each test image and from "
            "the attack-path point of largest |kappa| inside the radius. ")
    if cfg.get("missing"):
        text += (f"PARTIAL RUN: beta {cfg['missing']} not measured yet (the run stopped; it resumes with the same "
                 "command). ")
    for arch, note in notes.items():
        if "max pools" in note:
            text += (f"{arch}: the twin keeps its max pools (only ReLUs become softplus), so it is smooth only off "
                     "the max-pool tie set; a failing segment with a selection switch is EXEMPT. ")
        if note:
            text += f"{arch} constants: {note}. "
    return text
