"""Manipulate explanations of test images of a zoo model (paper sec. 2.2) and report the metrics.

Pairs of test images of different classes are drawn (seeded): the map of the second is the target
for the first. Results are written batch by batch to OUT/results.csv and OUT/batches/, so an
interrupted run resumes where it stopped. OUT/config.json records the options, seed, versions and
device; OUT/manipulation.png is laid out like the paper's Figure 2; OUT/summary.json holds the
median and 10th/90th percentiles of every metric.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from geomexpl import data, nets, runs
from geomexpl.explain import METHODS, fit_patterns
from geomexpl.explain.patterns import PATTERN_METHODS

HELP = "manipulate explanations of a zoo model and report SSIM/PCC/MSE and the output change"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="vgg", choices=nets.ARCHS, help="zoo architecture")
    parser.add_argument("--dataset", default="digits", choices=data.names(), help="built-in dataset")
    parser.add_argument("--weights", type=Path, help="your own weights file for --arch (else the zoo's)")
    parser.add_argument("--method", default="gradient", help=f"explanation method, one of {sorted(METHODS)}")
    parser.add_argument("--n", type=int, default=16, help="number of image pairs to attack")
    parser.add_argument("--batch-size", type=int, default=16, help="images attacked at once")
    parser.add_argument("--steps", type=int, help="Adam steps (default: the supplement's preset)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the preset)")
    parser.add_argument("--target", default="explanation", choices=("explanation", "text"),
                        help="target maps: another image's explanation, or the text of the paper's Figure 1")
    defence = parser.add_mutually_exclusive_group()
    defence.add_argument("--smooth-beta", type=float, help="attack the beta-smoothed method (paper: 0.8)")
    defence.add_argument("--smoothgrad", type=int, help="attack SmoothGrad with this many samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image pairs")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--out", type=Path, required=True, help="output folder (re-run it to resume)")
    runs.add_overwrite(parser)


def attack_pairs(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded pairs (attacked image, target image) of different classes."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randperm(len(labels), generator=g)[:n]
    second = torch.empty_like(first)
    for i, idx in enumerate(first.tolist()):
        others = (labels != labels[idx]).nonzero().flatten()
        second[i] = others[torch.randint(len(others), (1,), generator=g)]
    return first, second


def run(args) -> int:
    from geomexpl import attack

    if args.method not in METHODS:
        raise ValueError(f"unknown explanation method {args.method!r}; available: {sorted(METHODS)}")
    if args.n < 1 or args.batch_size < 1:
        raise ValueError("--n and --batch-size must be at least 1")
    for name in ("steps", "lr", "smooth_beta", "smoothgrad"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    device = runs.resolve_device(args.device)
    images, labels = data.load(args.dataset, "test")
    if args.n > len(images):
        raise ValueError(f"--n {args.n} exceeds the {len(images)} test images of {args.dataset}")
    model = nets.pretrained(args.arch, args.dataset, weights=args.weights).to(device)
    spec = data.spec(args.dataset)
    bounds = (spec.lower, spec.upper)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
               if k not in ("out", "device", "_run", "command", "overwrite")}
    runs.start_run(args.out, {"command": "attack", **options}, args.seed, device, overwrite=args.overwrite)
    options = {}
    if args.method in PATTERN_METHODS:  # patterns fitted on (up to) 512 training images, cached
        options["patterns"] = fit_patterns(model, data.load(args.dataset, "train")[0][:512].to(device))
    first, second = attack_pairs(labels, args.n, args.seed)
    table = runs.ResultTable(args.out / "results.csv", key=("example",))
    from tqdm.auto import tqdm

    for start in tqdm(range(0, args.n, args.batch_size), desc=f"attacking {args.method}", unit="batch"):
        ids = list(range(start, min(start + args.batch_size, args.n)))
        if all(table.done(example=i) for i in ids):
            continue
        x = images[first[ids]].to(device)
        if args.target == "text":
            t = attack.text_target("this explanation was manipulated", (spec.size, spec.size), batch=len(ids),
                            floor=0.05).to(device)
        else:
            t = attack.explanation_target(model, images[second[ids]].to(device), args.method, bounds=bounds,
                                   beta=args.smooth_beta, smoothgrad=args.smoothgrad, **options)
        result = attack.manipulate(model, x, t, args.method, steps=args.steps, lr=args.lr, bounds=bounds,
                            smooth_beta=args.smooth_beta, smoothgrad=args.smoothgrad, progress=True, **options)
        _save_batch(args.out / "batches" / f"batch_{start:05d}.pt", result)
        table.append([{**row, "image_index": int(first[row["example"]]),
                       "target_index": int(second[row["example"]])} for row in result.table(offset=start)])
    _figure(args.out)
    summary = _summary(table.rows)
    runs.write_json(args.out / "summary.json", summary)
    for metric, s in summary.items():
        print(f"{metric:>18}: median {s['median']:.4g}  [p10 {s['p10']:.4g}, p90 {s['p90']:.4g}]")
    print(f"results in {args.out}")
    return 0


def _save_batch(path: Path, result) -> None:
    tensors = {k: getattr(result, k).cpu() for k in ("x", "x_adv", "map_x", "map_adv", "target_map")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(tensors, tmp)
    tmp.replace(path)


def _figure(out: Path, rows: int = 4) -> None:
    from geomexpl.plot import manipulation_figure

    first = sorted((out / "batches").glob("batch_*.pt"))[0]
    t = torch.load(first, weights_only=True)
    k = min(rows, len(t["x"]))
    manipulation_figure(t["x"][:k], t["map_x"][:k], t["target_map"][:k], t["x_adv"][:k], t["map_adv"][:k],
                        out / "manipulation.png")


def _summary(rows: list[dict]) -> dict:
    skip = {"example", "method", "target_class", "image_index", "target_index"}
    columns = [k for k in rows[0] if k not in skip]
    out = {}
    for col in columns:
        values = torch.tensor([float(r[col]) for r in rows], dtype=torch.float64)
        q = torch.quantile(values, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
        out[col] = {"median": float(q[1]), "p10": float(q[0]), "p90": float(q[2]), "n": len(rows)}
    return out
