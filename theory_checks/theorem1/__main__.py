"""Check Theorem 1 on a zoo model or on your own, from the command line.

    python -m theory_checks.theorem1 --arch vgg --dataset digits --beta 5 --n 2
    python -m theory_checks.theorem1 --model mypkg.nets:build --weights net.pt --images my_folder \
        --size 32 --channels 1 --beta 5 --out t1-out
    python -m theory_checks.theorem1 --report theory_checks/full_report     # the zoo report, resumable

``--model module:attr`` names an nn.Module, or a class / function called without arguments to build one;
``--weights`` is read with ``torch.load(weights_only=True)`` (``geomexpl.nets.load_weights``), so a weight
file cannot run code. Prints the verdict and the per-segment table; ``--out`` also writes segments.csv,
curves.csv and bracket.json. Exit status 0 on PASS, 1 on FAIL.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
from torch import nn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m theory_checks.theorem1", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", help="zoo architecture (with --dataset)")
    source.add_argument("--model", help="your model as module:attr (an nn.Module, or a callable building one)")
    source.add_argument("--report", type=Path, help="re-run the zoo report into this run folder (resumable) and "
                        "replace the theorem1 section of its report.md")
    parser.add_argument("--dataset", default="digits", help="built-in dataset of --arch (test split)")
    parser.add_argument("--weights", type=Path, help="weights file for --model or --arch (loaded weights_only)")
    parser.add_argument("--images", type=Path, help="image folder root/<class>/<image> for --model")
    parser.add_argument("--size", type=int, default=32, help="image side for --images (default 32)")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 grey or 3 RGB for --images")
    parser.add_argument("--beta", type=float, help="softplus beta of the twin; leave out for a smooth model")
    parser.add_argument("--cls", type=int, help="class of g (default: the predicted class of each image)")
    parser.add_argument("--n", type=int, default=2, help="number of images (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image draw and the random curves")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda', ... (default cpu)")
    parser.add_argument("--rows", type=int, default=20, help="segment rows to print, largest ratio first")
    parser.add_argument("--quick", action="store_true", help="with --report: the small quick configuration")
    parser.add_argument("--saved-only", action="store_true",
                        help="with --report: measure nothing, write the report of the (model, beta) already saved")
    parser.add_argument("--out", type=Path, help="folder for segments.csv, curves.csv and bracket.json")
    return parser


def load_user_model(spec: str, weights: Path | None) -> nn.Module:
    """``module:attr`` -> an nn.Module (attr called without arguments unless it is one), weights loaded safely."""
    from geomexpl import nets

    if spec.count(":") != 1:
        raise ValueError(f"--model must be module:attr (e.g. mypkg.nets:Net), got {spec!r}")
    module_name, attr = spec.split(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot find {attr!r} in module {module_name!r}: {err}") from err
    model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} built a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        nets.load_weights(model, weights)
    return model.eval().requires_grad_(False)


def load_inputs(args) -> tuple[nn.Module, torch.Tensor]:
    from geomexpl import data, nets

    if args.model:
        if args.images is None:
            raise ValueError("--model needs --images (a folder root/<class>/<image>)")
        model = load_user_model(args.model, args.weights)
        images, _, _ = data.load_folder(args.images, size=args.size, channels=args.channels)
    else:
        model = nets.pretrained(args.arch, args.dataset, weights=args.weights, progress=False)
        images, _ = data.load(args.dataset, "test")
    if args.n < 1:
        raise ValueError("--n must be >= 1")
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    return model, images[index.sort().values]


def run_report(out: Path, quick: bool, seed: int, saved_only: bool = False) -> int:
    """The zoo report into ``out`` (resumable); an existing report.md keeps its other checks' sections."""
    from geomexpl.runs import environment
    from theory_checks.report import replace_check
    from theory_checks.theorem1.report import run

    result = run(out, quick, seed, saved_only=saved_only)
    replace_check(out, result, dict(environment(seed, device="cpu", quick=quick), checks=[result.name]))
    for sub in result.subchecks:
        print(f"  {sub.status}  {sub.name}")
    return 0 if result.passed else 1


def main(argv: list[str] | None = None) -> int:
    from theory_checks.report import write_csv
    from theory_checks.theorem1.api import check

    args = build_parser().parse_args(argv)
    if args.report:
        return run_report(args.report, args.quick, args.seed, args.saved_only)
    model, x = load_inputs(args)
    device = torch.device(args.device)
    result = check(model.to(device), x.to(device), beta=args.beta, cls=args.cls, seed=args.seed)
    print(result)
    print(result.table(args.rows))
    if args.out:
        write_csv(args.out / "segments.csv", result.segments)
        write_csv(args.out / "curves.csv", result.curves)
        (args.out / "bracket.json").write_text(json.dumps({**result.bracket, "counts": result.counts,
                                                           "notes": result.notes}, indent=2, default=str) + "\n")
        print(f"tables: {args.out}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
