"""python -m experiments {all,<study>...} --out DIR [--quick] [--executor local|ray] [--seed N] [--extend]
[--report-only]

Runs the studies (resuming any interrupted one: finished tasks are skipped), writes per study
OUT/<study>/{config.json,results.csv,claims.json,*.png}, and a report of the claims checked.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.common import STUDIES, load_run, run_study, study, write_report
from experiments.executors import EXECUTORS
from geomexpl.runs import add_overwrite

REPORT = Path(__file__).with_name("REPORT.md")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", metavar="STUDY", choices=("all",) + STUDIES,
                        help=f"'all' or any of: {', '.join(STUDIES)}")
    parser.add_argument("--out", type=Path, required=True, help="output folder (re-run it to resume)")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (seconds; for CI)")
    parser.add_argument("--executor", default="local", choices=sorted(EXECUTORS),
                        help="run tasks in this process (local) or as Ray remote tasks (ray)")
    parser.add_argument("--seed", type=int, default=0, help="seed of pairs, noise and initialisations")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda:1', ...")
    parser.add_argument("--report", type=Path, help="where to write the report (default: experiments/REPORT.md "
                        "for a full 'all' run, else OUT/REPORT.md)")
    parser.add_argument("--report-only", action="store_true", help="run no task: re-make the figures and the report "
                        "from the tables stored under --out (e.g. while a long run is still going)")
    parser.add_argument("--extend", action="store_true", help="let a stored run take options that only add tasks "
                        "(more pairs, or a study's other extendable options), keeping its finished tasks")
    add_overwrite(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    names = list(STUDIES) if "all" in args.studies else list(dict.fromkeys(args.studies))
    try:
        for name in [] if args.report_only else names:
            run_study(name, args.out, quick=args.quick, seed=args.seed, executor=args.executor, device=args.device,
                      overwrite=args.overwrite, extend=args.extend)
    except ValueError as err:
        print(f"python -m experiments: error: {err}", file=sys.stderr)
        return 2
    if args.report_only:
        for name in names:
            run = load_run(name, args.out) if (args.out / name / "config.json").is_file() else None
            if run is not None and run.rows:  # a run that has started but finished no task has no figure yet
                study(name).figures(run)
    report = args.report or (REPORT if "all" in args.studies and not args.quick else args.out / "REPORT.md")
    print(f"report: {write_report(args.out, names, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
