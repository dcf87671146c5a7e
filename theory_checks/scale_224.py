"""The checks at the paper's input size, d = 3 x 224 x 224 = 150,528: curvature against beta on VGG-16
(:mod:`theory_checks.curvature_vs_beta_224`) and Theorem 1's per-segment test on AlexNet
(:mod:`theory_checks.theorem1_224`), both with random weights, as one section of the theory-checks report.

Both parts are resumable: their tables under ``out_dir/curvature-224`` and ``out_dir/theorem1-224`` are
read back where they exist, so the report of a run folder is re-made in seconds; measuring them anew
takes hours on a 2-core CPU (their tables record the seconds). ``quick``: the same code on small inputs
(VGG-16 at 32x32, AlexNet at 64x64, fewer curves), about a minute. ``python -m theory_checks.scale_224
--report DIR`` writes this section into the theory-checks run DIR, keeping its other sections.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from theory_checks import curvature_vs_beta_224 as curv
from theory_checks import theorem1_224 as t1
from theory_checks.curvature_vs_beta import fitted_slopes
from theory_checks.report import CheckResult, SubCheck
from theory_checks.theorem1.plots import ratios
from theory_checks.theorem1.segments import TOLERANCE_RULE

NAME = "scale-224"
INJECTED = 0.2  # a curvature this much too small divides kappa_bar l by 1 - INJECTED
QUICK = dict(side=32, images=1, betas=(1.0, 50.0), t1_side=t1.QUICK_SIDE,
             t1_size=dict(attack_steps=0, max_points=5, ascent_steps=0, refine_rounds=0, tight_scales=(0.1,)))
FULL = dict(side=224, images=curv.IMAGES, betas=curv.BETAS, t1_side=224, t1_size=t1.SIZE)


def curvature_rows(folder: Path, size: dict) -> list[dict]:
    """The curvature-vs-beta rows (measured for the betas not yet in the folder's table), with its section."""
    rows = curv.measure(folder, size["betas"], size["side"], size["images"])
    curv.write_section(folder, rows)
    return rows


def curvature_subcheck(rows: list[dict]) -> SubCheck:
    betas = sorted({r["beta"] for r in rows})
    slopes = fitted_slopes(rows)
    median = slopes.pop("median_kappa_by_beta")
    worst = max(r["relative_residual"] for r in rows)
    rising = all(median[a] < median[b] for a, b in zip(betas, betas[1:]))
    side = int(round(math.sqrt(rows[0]["d"] / 3)))
    numbers = {"d": int(rows[0]["d"]), "images": len({r["image"] for r in rows}),
               **{f"median abs(kappa_max) at beta={b:g}": median[b] for b in betas},
               "slope of log median abs(kappa_max) on log beta": slopes["slope_all"],
               "worst relative residual": worst, "HVPs per batch (max over beta)": int(max(r["hvps"] for r in rows)),
               "seconds (all betas)": sum({r["beta"]: r["batch_seconds"] for r in rows}.values())}
    return SubCheck(
        name=f"curvature_vs_beta_{side}",
        measured=(f"VGG-16 (torchvision layout, random weights) at {side}x{side}: |kappa_max| of the level set of the "
                  "predicted logit at each image, float32 softplus_beta twin, batched torch Lanczos (k = 1)."),
        numbers=numbers, tolerance=10 * curv.TOL,
        tolerance_rule=(f"Every |kappa_max| a converged Ritz value: relative residual <= {10 * curv.TOL:g} (Lanczos to "
                        f"{curv.TOL:g}, residual recomputed with a fresh HVP). PASS also needs the median to rise with "
                        "beta, as the paper's bound beta C~ / |grad g| (eq. 15) and its beta-smoothing argument say."),
        passed=worst <= 10 * curv.TOL and rising,
        explanation=("The median rises with beta." if rising else "The median does NOT rise with beta.") +
                    " The bound itself is not evaluated here (no C~ for a 224x224 VGG-16). The values are those of "
                    "the float32 twin, whose Hessian products on these random weights are inexact: "
                    "docs/curvature_solvers.md (Precision) measures how far its |kappa_max| is from float64's.",
        files=[f"curvature-224/{curv.CSV}"])


def max_pool_note(folder: Path) -> str:
    """What the same check says with AlexNet's max pools kept, from ``theorem1_224 --max-pools`` if stored."""
    path = folder / "bracket.json"
    if not path.exists():
        return ""
    stored = json.loads(path.read_text())
    side, counts = stored["config"]["side"], stored["counts"]
    return (f" With AlexNet's max pools kept (`{path.parent.name}/`, side {side}, curves of the same kinds), "
            f"{counts['exempt']} of {counts['segments']} segments are EXEMPT: a pool's selection changes inside them "
            f"({counts['pool_switches']} switches) and their ratio exceeds 1, so that net tests its pools, not the "
            "theorem.")


def theorem1_subcheck(summary: dict, segments: list[dict], note: str = "") -> SubCheck:
    config, counts = summary["config"], summary["counts"]
    tested = [r for r in segments if r["verdict"] in ("PASS", "FAIL") and r["informative"] in (True, "True")]
    would_fail = sum(r["ratio"] / (1 - INJECTED) > 1 for r in tested)
    numbers = {"d": config["d"], "beta": config["beta"], "segments": counts["segments"], "tests": counts["tests"],
               "informative tests": counts["informative"], "FAIL": counts["failed"], "EXEMPT": counts["exempt"],
               "ratio median": counts["ratio_median"], "ratio p90": counts["ratio_p90"],
               "ratio max": counts["ratio_max"], f"informative tests failed by a {INJECTED:.0%} low kappa": would_fail,
               "sup abs(kappa) found (lower end)": summary["bracket"]["lower"],
               "beta C~ / c, spectral (upper end)": summary["bracket"].get("upper_spectral", math.nan),
               "points above beta C~ / norm(grad g)": summary["bracket"].get("point_bound_violations"),
               "seconds": summary["seconds"],
               "torch threads": summary["threads"]}
    return SubCheck(
        name=f"theorem1_{config['side']}",
        measured=(f"AlexNet (torchvision layout, random weights, max pools replaced by average pools of the same "
                  f"geometry: Theorem 1 is for smooth nets) at {config['side']}x{config['side']}, float64 softplus twin "
                  f"at beta = {config['beta']:g}, one uniform random image: the per-segment test of Theorem 1 on a random "
                  "curve and on tight and short segments at every scale, failing segments subdivided "
                  f"({config['size'].get('refine_rounds', 3)} rounds here)."),
        numbers=numbers, tolerance=None, tolerance_rule=TOLERANCE_RULE,
        passed=bool(summary["passed"]),
        explanation=(f"Each ratio is |n(p_(i+1)) - n(p_i)| / (kappa_bar l); a curvature {INJECTED:.0%} too small "
                     f"divides the denominator by {1 - INJECTED:g}, so the tests with a ratio above {1 - INJECTED:g} are "
                     "the ones that error would fail (the check can fail). Bracket upper ends: "
                     f"{'; '.join(n for n in summary['notes'] if n.startswith('constants')) or 'both C~ computed'}." + note),
        files=["theorem1-224/segments.csv", "theorem1-224/curves.csv", "theorem1-224/bracket.json"])


def run(out_dir: Path, quick: bool, seed: int) -> CheckResult:
    """Both parts at 224 (``quick``: small inputs); the seeds are fixed by the parts (``seed`` is unused)."""
    size = QUICK if quick else FULL
    out_dir = Path(out_dir)
    rows = curvature_rows(out_dir / "curvature-224", size)
    folder = out_dir / "theorem1-224"
    summary = t1.measure(folder, size["t1_side"], size=size["t1_size"])
    segments = t1.read_segments(folder)
    for row in segments:
        row["label"] = f"alexnet-{size['t1_side']}"
    ratios(segments, folder / "segment_ratios.png")
    subchecks = [curvature_subcheck(rows), theorem1_subcheck(summary, segments, max_pool_note(folder / "max-pools-64"))]
    summary_text = (f"The paper's scale, d = {3 * size['side'] ** 2:,}: curvature against beta on VGG-16 and Theorem 1's "
                    f"per-segment test on AlexNet, both with random weights (no trained 224x224 weights exist here). "
                    "Tables are read back when present "
                    "(`python -m theory_checks.curvature_vs_beta_224`, `python -m theory_checks.theorem1_224`).")
    return CheckResult(NAME, "curvature and Theorem 1 at the paper's input size", summary_text, subchecks,
                       [f"curvature-224/{curv.CSV}", "curvature-224/curvature_vs_beta_224.png",
                        "theorem1-224/segment_ratios.png"])


def main(argv: list[str] | None = None) -> int:
    """``python -m theory_checks.scale_224 --report DIR``: this section into DIR's report, others kept."""
    import argparse

    from geomexpl.runs import environment
    from theory_checks.report import replace_check

    parser = argparse.ArgumentParser(prog="python -m theory_checks.scale_224", description=__doc__.split("\n")[0])
    parser.add_argument("--report", type=Path, required=True, help="run folder of the theory checks")
    parser.add_argument("--quick", action="store_true", help="small inputs (seconds)")
    args = parser.parse_args(argv)
    result = run(args.report, args.quick, 0)
    replace_check(args.report, result, dict(environment(0, device="cpu", quick=args.quick), checks=[NAME]))
    for sub in result.subchecks:
        print(f"  {sub.status}  {sub.name}")
    print(f"report: {args.report / 'report.md'}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
