"""Run theory checks and write report.md, results.json, config.json plus each check's tables and plots.

Exit status: 0 when every sub-check passes, 1 when one fails.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from pathlib import Path

from geomexpl.runs import add_overwrite, claim_run, environment, resolve_device, write_json
from theory_checks.report import write_run

# name -> module path (imported lazily), in report order. A module exposes NAME and
# run(out_dir, quick, seed[, device]) -> CheckResult; a check without ``device`` runs on the CPU (Theorem 2's
# quadrature and Monte Carlo are NumPy).
CHECKS = {
    "theorem1": "theory_checks.theorem1",
    "theorem2": "theory_checks.theorem2",
    "curvature-vs-beta": "theory_checks.curvature_vs_beta",
    "scale-224": "theory_checks.scale_224",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m theory_checks", description=__doc__)
    parser.add_argument("check", choices=[*CHECKS, "all"], help="the check to run; 'all' runs every one")
    parser.add_argument("--out", type=Path, required=True, help="directory for the report, tables and plots")
    parser.add_argument("--quick", action="store_true", help="small sample sizes: seconds instead of minutes")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'auto', ... for the networks' checks")
    add_overwrite(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    names = list(CHECKS) if args.check == "all" else [args.check]
    device = resolve_device(args.device)
    options = {"command": "theory_checks", "checks": names, "quick": args.quick, "seed": args.seed,
               "device_type": device.type}
    claim_run(args.out, options, overwrite=args.overwrite)  # the report is written only at the end
    config = {"options": options, **environment(args.seed, device=device, quick=args.quick), "checks": names}
    write_json(args.out / "config.json", config)  # an interrupted run is this run, resumable by rerunning
    results = []
    for name in names:
        start = time.perf_counter()
        run = importlib.import_module(CHECKS[name]).run
        on_device = {"device": device} if "device" in inspect.signature(run).parameters else {}
        result = run(args.out, args.quick, args.seed, **on_device)
        print(f"{name}: {result.status} ({time.perf_counter() - start:.1f} s)")
        for sub in result.subchecks:
            print(f"  {sub.status}  {sub.name}")
        results.append(result)
    write_run(results, args.out, config)
    print(f"report: {args.out / 'report.md'}")
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
