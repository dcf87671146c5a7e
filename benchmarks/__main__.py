"""Run every ``benchmarks/bench_*.py`` module: ``python -m benchmarks [--quick] [--only NAME]``."""
from __future__ import annotations

import argparse
import importlib
import inspect
from pathlib import Path

from benchmarks.harness import Report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    parser.add_argument("--only", nargs="*", help="names such as 'geometry' for bench_geometry.py")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--device", default="cpu", help="device for the benchmarks that take one ('cuda', ...)")
    parser.add_argument("--write-results", action="store_true",
                        help="write the committed results.{json,md} (otherwise only print the table)")
    args = parser.parse_args()
    report = Report()
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        run = importlib.import_module(f"benchmarks.{path.stem}").run
        if "device" in inspect.signature(run).parameters:
            run(report, args.quick, device=args.device)
        else:
            run(report, args.quick)
    if args.write_results:
        report.write(args.out)
    print(report.markdown())


if __name__ == "__main__":
    main()
