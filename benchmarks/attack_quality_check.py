"""The attack's quality kept (issue 12): re-run ``geomexpl attack`` with the settings recorded in
``docs/attack_quality/<method>/config.json`` and check that the new median PCC(map, target) lies in
the 95% bootstrap interval of the old run's median (percentile bootstrap over the old run's
examples, 2000 resamples, seed 0). The pairs and seeds are the same, so the runs are also
compared example by example (largest |PCC difference|).

``python -m benchmarks.attack_quality_check --methods gradient lrp [--write-results]``; the table
goes to ``benchmarks/attack_quality_check.{csv,md}`` (rows of other methods are kept).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OLD = REPO / "docs" / "attack_quality"
OUT = Path(__file__).with_name("attack_quality_check")


def bootstrap_median_interval(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``values``."""
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(resamples, len(values)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def _pcc(path: Path) -> np.ndarray:
    with path.open() as f:
        return np.array([float(row["map_pcc"]) for row in csv.DictReader(f)])


def check(method: str, threads: int) -> dict:
    options = json.loads((OLD / method / "config.json").read_text())["options"]
    out = Path(tempfile.mkdtemp(prefix=f"attack_quality_{method}_"))
    cmd = [sys.executable, "-m", "geomexpl", "attack", "--arch", options["arch"], "--dataset", options["dataset"],
           "--method", method, "--n", str(options["n"]), "--batch-size", str(options["batch_size"]),
           "--steps", str(options["steps"]), "--lr", str(options["lr"]), "--seed", str(options["seed"]),
           "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True)
    seconds = time.perf_counter() - start
    old, new = _pcc(OLD / method / "results.csv"), _pcc(out / "results.csv")
    low, high = bootstrap_median_interval(old)
    median = float(np.median(new))
    return {"method": method, "n": len(new), "steps": options["steps"], "lr": options["lr"],
            "old_median_pcc": float(np.median(old)), "old_ci_low": low, "old_ci_high": high,
            "new_median_pcc": median, "inside": low <= median <= high,
            "max_abs_pcc_difference": float(np.abs(new - old).max()), "wall_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attack_quality_check", description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["gradient", "lrp", "pattern_attribution"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    rows = {}
    if args.write_results and OUT.with_suffix(".csv").exists():
        with OUT.with_suffix(".csv").open() as f:
            rows = {r["method"]: r for r in csv.DictReader(f)}
    for method in args.methods:
        rows[method] = check(method, args.threads)
        print(json.dumps(rows[method]), flush=True)
        if args.write_results:
            _write(rows)


def _write(rows: dict) -> None:
    fields = list(next(iter(rows.values())).keys())
    with OUT.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows.values())
    lines = ["| method | N | steps / lr | old median PCC [95% bootstrap] | new median PCC | inside | max abs "
             "per-example PCC difference | wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['method']} | {r['n']} | {r['steps']} / {r['lr']} | {float(r['old_median_pcc']):.3f} "
                     f"[{float(r['old_ci_low']):.3f}, {float(r['old_ci_high']):.3f}] | {float(r['new_median_pcc']):.3f} "
                     f"| {r['inside']} | {float(r['max_abs_pcc_difference']):.2g} | {float(r['wall_seconds']):.0f} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
