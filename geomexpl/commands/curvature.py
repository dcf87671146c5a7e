"""Principal curvatures of the winning-class level set of a zoo network against the softplus beta.

For N test images, the ReLU model's predicted class k is fixed and the level set of g_k through each
image is measured on the softplus_beta twin for every beta: the k largest principal curvatures
(|kappa| descending, matrix-free Lanczos on the shape operator P H P / |grad g_k|, paper sec. 3).
Theorem 1 bounds |kappa_max| by beta C~ / c, so the log-log plot should grow at most linearly.
Writes curvature.csv (image, beta, k, kappa), config.json and curvature_vs_beta.png to --out; a run
with the same settings resumes, skipping the betas already in the table (other settings are refused).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from geomexpl import runs

HELP = "principal curvatures of the network's level sets against beta (Theorem 1)"
TABLE, FIGURE = "curvature.csv", "curvature_vs_beta.png"


def configure(parser) -> None:
    parser.add_argument("--arch", default="vgg", help="zoo architecture (see `geomexpl train --help`)")
    parser.add_argument("--dataset", default="digits", help="built-in dataset")
    parser.add_argument("--split", default="test", help="dataset split to draw the images from")
    parser.add_argument("--n", type=int, default=8, help="number of images (drawn with --seed)")
    parser.add_argument("--betas", type=float, nargs="+", default=[1.0, 2.0, 5.0, 10.0],
                        help="softplus beta values of the smooth twin")
    parser.add_argument("--k", type=int, default=5, help="number of principal curvatures per image")
    parser.add_argument("--method", choices=("torch", "lanczos", "dense"), default="torch",
                        help="eigensolver: batched torch Lanczos, scipy eigsh per image, or the dense oracle")
    parser.add_argument("--tol", type=float, default=1e-6, help="relative eigenvalue tolerance")
    parser.add_argument("--float64", action="store_true", help="compute in float64 (a float64 copy of the model)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', ...")
    parser.add_argument("--seed", type=int, default=0, help="seed for the image draw and the Lanczos start")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    runs.add_overwrite(parser)


def run(args) -> int:
    from geomexpl import data, nets, plot
    from geomexpl.geometry import logit, principal_curvatures

    if args.n < 1 or args.k < 1 or any(b <= 0 for b in args.betas):
        raise ValueError("--n and --k must be >= 1 and every beta > 0")
    device = runs.resolve_device(args.device)
    dtype = torch.float64 if args.float64 else torch.float32
    model = nets.pretrained(args.arch, args.dataset)
    model = (copy.deepcopy(model) if args.float64 else model).to(device=device, dtype=dtype)
    images, labels = data.load(args.dataset, args.split)
    if args.n > len(images):
        raise ValueError(f"--n {args.n} exceeds the {len(images)} images of {args.dataset}/{args.split}")
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.n].sort().values
    x = images[index].to(device=device, dtype=dtype)
    with torch.no_grad():
        target = model(x).argmax(1)
    options = {"arch": args.arch, "dataset": args.dataset, "split": args.split, "n": args.n, "k": args.k,
               "method": args.method, "tol": args.tol, "dtype": str(dtype), "seed": args.seed,
               "images": index.tolist(), "labels": labels[index].tolist(), "targets": target.tolist()}
    runs.start_run(args.out, {"command": "curvature", **options}, args.seed, device, overwrite=args.overwrite)
    table = runs.ResultTable(args.out / TABLE, key=("beta",))
    for beta in tqdm([b for b in args.betas if not table.done(beta=b)], desc="beta", unit="beta"):
        kappa, _ = principal_curvatures(logit(nets.softplus_twin(model, beta), target), x, k=args.k,
                                        method=args.method, tol=args.tol, seed=args.seed)
        table.append([{"image": int(index[b]), "beta": beta, "k": j + 1, "kappa": float(kappa[b, j])}
                      for b in range(args.n) for j in range(args.k)])
    rows = [{"image": int(r["image"]), "beta": float(r["beta"]), "k": int(r["k"]), "kappa": float(r["kappa"])}
            for r in table.rows]
    betas = sorted(args.betas)
    kappa_max = np.array([[abs(r["kappa"]) for beta in betas for r in rows
                           if r["image"] == int(i) and r["beta"] == beta and r["k"] == 1] for i in index])
    plot.percentile_curves(betas, {"|kappa_max|": kappa_max}, args.out / FIGURE, logx=True, logy=True,
                           fit_slope=len(betas) > 1, xlabel="softplus beta",
                           ylabel="largest |principal curvature|",
                           title=f"{args.arch}/{args.dataset}: median, 10-90th percentile of {args.n} images")
    for beta, column in zip(betas, kappa_max.T):
        print(f"beta {beta:g}: median |kappa_max| {np.median(column):.4g} "
              f"(10-90%: {np.percentile(column, 10):.4g}-{np.percentile(column, 90):.4g})")
    print(f"wrote {args.out / TABLE}, {args.out / 'config.json'}, {args.out / FIGURE}")
    return 0

