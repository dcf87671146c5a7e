"""Theorem 1's per-segment test (:mod:`theory_checks.theorem1`) at the paper's input size, d = 150,528.

Model: ``geomexpl.nets.torchvision_like('alexnet')`` with RANDOM weights (torch seed 0; the repository has
no trained 224x224 weights) and its max pools replaced by average pools of the same kernel and stride,
checked on its float64 softplus_beta twin at ``BETA``. Theorem 1 is stated for softplus networks; a twin
that keeps AlexNet's overlapping max pools is not C^2 wherever a pool's selection changes, and on random
weights and images the selections change within segments of length 0.006 (the smoke run at side 64 of
``--max-pools`` marks most segments EXEMPT), so the max-pool net would test the pools, not the theorem.
``--max-pools`` keeps them, to see that. AlexNet rather than
VGG-16: it has the same d and is one of the paper's architectures (supplement Table 2), and one float64
HVP of its twin costs about a seventh of VGG-16's on this CPU, which is what makes a float64 Lanczos at
every curve sample affordable without a GPU. Image: uniform random in [0, 1]^(3x224x224) (seed 1, the
first image of ``theory_checks.curvature_vs_beta_224``). One image has no attack path, so the curves are
the random curve, the tight and short segments at every scale and their refinements (``SIZE``).

``python -m theory_checks.theorem1_224 --out DIR`` writes DIR/segments.csv, DIR/curves.csv and
DIR/bracket.json (with the wall time and the configuration); a folder that holds them for the same
configuration is read back instead of measured again.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
from torch import nn

from geomexpl import nets
from theory_checks.report import write_csv

ARCH, BETA, SEED = "alexnet", 10.0, 0
SIZE = dict(attack_steps=0, max_points=9, ascent_steps=2, refine_rounds=2)  # overrides of theorem1.api.SIZE
QUICK_SIDE = 64  # the smallest side AlexNet's layout takes comfortably: a smoke run in seconds


def average_pools(model: nn.Module) -> nn.Module:
    """``model`` with every nn.MaxPool2d replaced, in place, by an nn.AvgPool2d of the same geometry."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MaxPool2d):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, nn.AvgPool2d(module.kernel_size, module.stride, module.padding,
                                                                     ceil_mode=module.ceil_mode))
    return model


def setup(side: int = 224, max_pools: bool = False) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nets.torchvision_like(ARCH).requires_grad_(False)
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    return (model if max_pools else average_pools(model)), x


def configuration(side: int, max_pools: bool = False, size: dict = SIZE) -> dict:
    return dict(arch=ARCH, pools="max" if max_pools else "average", weights="random (torch seed 0)", side=side,
                d=3 * side * side, beta=BETA, seed=SEED, images=1, size=size)


def measure(out: Path, side: int = 224, device: str | torch.device = "cpu", max_pools: bool = False,
            size: dict = SIZE) -> dict:
    """Run (or read back) the check into ``out``; returns bracket.json's content."""
    from theory_checks.theorem1.api import check

    out.mkdir(parents=True, exist_ok=True)
    stored = out / "bracket.json"
    config = json.loads(json.dumps(configuration(side, max_pools, size)))  # as stored: tuples become lists
    if stored.exists():
        saved = json.loads(stored.read_text())
        if saved.get("config") == config:
            return saved
    model, x = setup(side, max_pools)
    start = time.perf_counter()
    result = check(model.to(device), x.to(device), beta=BETA, size=size, seed=SEED)
    seconds = time.perf_counter() - start
    write_csv(out / "segments.csv", result.segments)
    write_csv(out / "curves.csv", result.curves)
    summary = {"config": config, "passed": result.passed, "informative": result.informative, "tests": result.tests,
               "counts": result.counts, "bracket": result.bracket, "notes": result.notes, "seconds": seconds,
               "threads": torch.get_num_threads(), "device": str(device), "text": str(result)}
    stored.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def read_segments(out: Path) -> list[dict]:
    """segments.csv with its numbers as floats (the per-segment rows of ``theorem1.segments``)."""
    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return text

    with (out / "segments.csv").open() as handle:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m theory_checks.theorem1_224", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--side", type=int, default=224, help="image side (224: the paper's; 64 for a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-pools", action="store_true", help="keep AlexNet's max pools (not smooth)")
    args = parser.parse_args(argv)
    summary = measure(args.out, args.side, args.device, args.max_pools)
    print(summary["text"])
    print(f"{summary['seconds']:.0f} s on {summary['device']}; tables in {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
