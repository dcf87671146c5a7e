"""Run theory checks and write report.md, results.json, config.json plus each check's tables and plots.

Exit status: 0 when every sub-check passes, 1 when one fails, 2 for a check that is not available.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from theory_checks.report import environment, write_run

# name -> module path (imported lazily). A module exposes NAME and run(out_dir, quick, seed) -> CheckResult.
CHECKS = {
    "theorem2": "theory_checks.theorem2",
}
# Every check the project plans, in report order; those missing from CHECKS are "not available yet".
PLANNED = ("theorem1", "theorem2", "curvature-vs-beta")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m theory_checks", description=__doc__)
    names = list(dict.fromkeys([*PLANNED, *CHECKS]))
    parser.add_argument("check", choices=[*names, "all"], help="the check to run; 'all' runs every available one")
    parser.add_argument("--out", type=Path, required=True, help="directory for the report, tables and plots")
    parser.add_argument("--quick", action="store_true", help="small sample sizes: seconds instead of minutes")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check != "all" and args.check not in CHECKS:
        print(f"python -m theory_checks: error: check {args.check!r} is not available yet (no module "
              f"registered in theory_checks/__main__.py CHECKS); available: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    ordered = dict.fromkeys([*PLANNED, *CHECKS])
    names = [name for name in ordered if name in CHECKS] if args.check == "all" else [args.check]
    config = environment(args.seed, device="cpu", quick=args.quick)
    config["checks"] = names
    config["notes"] = [f"check {name!r} is not available yet" for name in PLANNED
                       if name not in CHECKS and args.check == "all"]
    results = []
    for name in names:
        start = time.perf_counter()
        result = importlib.import_module(CHECKS[name]).run(args.out, args.quick, args.seed)
        print(f"{name}: {result.status} ({time.perf_counter() - start:.1f} s)")
        for sub in result.subchecks:
            print(f"  {sub.status}  {sub.name}")
        results.append(result)
    write_run(results, args.out, config)
    print(f"report: {args.out / 'report.md'}")
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
