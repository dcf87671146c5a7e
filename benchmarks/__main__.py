"""Run every ``benchmarks/bench_*.py`` module: ``python -m benchmarks (--out DIR | --write-results) [--quick]``.

The committed tables ``benchmarks/results.{json,md}`` are written only with ``--write-results``;
any other run goes to ``--out``, under the run-folder rule of every command (see geomexpl.runs).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from benchmarks.harness import Report
from geomexpl.runs import add_overwrite, claim_run, write_json

COMMITTED = Path(__file__).parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    parser.add_argument("--only", nargs="*", help="names such as 'geometry' for bench_geometry.py")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="folder for results.json and results.md")
    target.add_argument("--write-results", action="store_true",
                        help=f"rewrite the committed tables in {COMMITTED} (full runs only)")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    names = [p.stem.removeprefix("bench_") for p in sorted(COMMITTED.glob("bench_*.py"))]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; available: {names}")
    if args.write_results and (args.quick or args.only):
        parser.error("--write-results rewrites every committed table: run without --quick and --only")
    out = COMMITTED if args.write_results else args.out
    options = {"command": "benchmarks", "quick": args.quick, "only": args.only}
    if not args.write_results:
        try:
            claim_run(out, options, overwrite=args.overwrite)
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
    report = Report()
    for name in names:
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").run(report, args.quick)
    report.write(out)
    if not args.write_results:
        write_json(out / "config.json", {"options": options})
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
