"""Cost of the softplus twin's torch-function mode: ``python -m benchmarks.twin_overhead --out FILE.csv``.

One attack step (forward, input gradient with its graph, gradient of the squared gradient) on the
zoo nets, timed for: the ReLU model itself, the twin (``softplus_twin``: the mode intercepts every
torch call), and a reference twin built by swapping ``nn.ReLU`` for ``nn.Softplus`` modules in a
copy (no mode; it would miss functional ReLUs, so the library does not use it). mode/swap is the
dispatch overhead; twin/plain adds the cost of softplus itself. Repeats are interleaved and the
median is reported.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from geomexpl import nets
from geomexpl.runs import write_csv

BETA = 10.0


def swapped(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every nn.ReLU replaced by nn.Softplus(BETA) (the reference twin)."""
    twin = copy.deepcopy(model)
    for module in list(twin.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Softplus(BETA, 20.0))
    return twin


def attack_step(model: nn.Module, x: torch.Tensor) -> None:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xr)[:, 0].sum(), xr, create_graph=True)
    torch.autograd.grad(g.pow(2).sum(), xr)


def measure(arch: str, batch: int, repeats: int) -> dict:
    model = nets.build(arch).eval()
    x = torch.rand(batch, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    variants = {"plain": model, "twin": nets.softplus_twin(model, BETA), "swap": swapped(model)}
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, variant in variants.items():
            start = time.perf_counter()
            attack_step(variant, x)
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return {"arch": arch, "batch": batch, "repeats": repeats, "threads": torch.get_num_threads(),
            **{f"{name}_ms": round(v, 3) for name, v in ms.items()},
            "twin_over_plain": round(ms["twin"] / ms["plain"], 3), "mode_over_swap": round(ms["twin"] / ms["swap"], 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.twin_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(arch, batch, args.repeats) for arch in ("mlp", "vgg", "resnet") for batch in args.batch]
    write_csv(args.out, rows)
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
