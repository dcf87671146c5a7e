"""Run every ``benchmarks/bench_*.py`` module: ``python -m benchmarks [--quick] [--only NAME]``."""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from benchmarks.harness import Report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    parser.add_argument("--only", nargs="*", help="names such as 'geometry' for bench_geometry.py")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    report = Report()
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.{path.stem}").run(report, args.quick)
    report.write(args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
