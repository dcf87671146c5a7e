"""|kappa_max| against beta at the paper's input size, d = 3 x 224 x 224 = 150,528 (paper sec. 3-4).

Model: ``geomexpl.nets.torchvision_like('vgg16')`` with RANDOM weights (torch seed 0): the
repository has no trained 224x224 weights. Images: uniform random in [0, 1]^(3x224x224) (seed 1;
the same images as ``benchmarks/curvature_224.py``). For each beta, |kappa_max| of the level set of
g_k (k the ReLU model's predicted class) at each image, on the float32 softplus_beta twin, by the
batched torch Lanczos (k = 1, which='LM', Krylov vectors in float64) to a relative residual of
``TOL``; the residual is recomputed with a fresh HVP and reported. The slope of log |kappa_max|
against log beta is fitted on the median (``curvature_vs_beta.fitted_slopes``). The bound of eq. (15)
is not evaluated here (C~ of a 224x224 VGG-16 is not computed).

``python -m theory_checks.curvature_vs_beta_224 --out DIR`` appends one CSV row per (beta, image) to
DIR/curvature_vs_beta_224.csv (resumable: betas already there are skipped), then writes the figure
and the report section DIR/section.md.
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch

from geomexpl import nets, plot
from geomexpl.geometry import logit, principal_curvatures
from theory_checks.curvature_vs_beta import fitted_slopes

BETAS = (1.0, 5.0, 20.0, 50.0)
IMAGES, TOL, MAXITER = 4, 1e-4, 400
CSV = "curvature_vs_beta_224.csv"


def setup(size: int = 224, images: int = IMAGES, arch: str = "vgg16"):
    torch.manual_seed(0)
    model = nets.torchvision_like(arch).requires_grad_(False)
    x = torch.rand(images, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, x


def beta_rows(model, x: torch.Tensor, beta: float) -> list[dict]:
    """One row per image: |kappa_max|, its relative residual, |grad g_k|, HVPs and seconds (whole batch)."""
    with torch.no_grad():
        classes = model(x).argmax(1)
    twin = nets.softplus_twin(model, beta)
    start = time.perf_counter()
    kappa, info = principal_curvatures(logit(twin, classes), x, k=1, which="LM", method="torch", tol=TOL,
                                       maxiter=MAXITER)
    seconds = time.perf_counter() - start
    size = kappa[:, 0].abs()
    return [dict(beta=beta, image=i, cls=int(classes[i]), kappa_max=float(size[i]), signed_kappa=float(kappa[i, 0]),
                 relative_residual=float(info.residuals[i, 0] / size[i]), grad_norm=float(info.grad_norm[i]),
                 hvps=int(info.n_hvp[i]), batch_seconds=seconds, d=x[0].numel(), threads=torch.get_num_threads())
            for i in range(x.shape[0])]


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as handle:
        return [{k: (v if k == "cls" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]


def append_rows(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def measure(out: Path, betas, size: int = 224, images: int = IMAGES) -> list[dict]:
    """The rows of ``betas`` in out/CSV, measuring (and appending) only the betas not stored yet."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / CSV
    missing = [b for b in betas if not any(r["beta"] == b for r in read_rows(path))]
    if missing:
        model, x = setup(size, images)
        for beta in missing:
            rows = beta_rows(model, x, beta)
            append_rows(path, rows)
            print(f"beta {beta:g}: |kappa_max| {[round(r['kappa_max'], 6) for r in rows]}, "
                  f"{rows[0]['hvps']} HVPs, {rows[0]['batch_seconds']:.0f} s", flush=True)
    return [r for r in read_rows(path) if r["beta"] in betas]


def write_section(out: Path, rows: list[dict]) -> None:
    """The figure (median and 10-90% band over images) and the markdown section for the report."""
    betas = sorted({r["beta"] for r in rows})
    ys = np.array([[r["kappa_max"] for r in rows if r["beta"] == b] for b in betas]).T
    plot.percentile_curves(np.array(betas), {"vgg16-224 (random weights)": ys}, out / "curvature_vs_beta_224.png",
                           xlabel="beta", ylabel="|kappa_max| at the image", logx=True, logy=True, fit_slope=True,
                           title="Top principal curvature at d = 150,528 (median, 10-90%)")
    slopes = fitted_slopes(rows)
    median = slopes.pop("median_kappa_by_beta")
    worst = max(r["relative_residual"] for r in rows)
    side = int(round(math.sqrt(rows[0]["d"] / 3)))
    lines = [f"## Curvature against beta at {side}x{side} (d = {int(rows[0]['d']):,})", "",
             "VGG-16 with torchvision's layout and RANDOM weights (no trained 224x224 weights exist in the repository), "
             f"{int(max(r['image'] for r in rows)) + 1} uniform random images, float32 softplus twin, top principal "
             f"curvature by the batched torch Lanczos (k = 1, relative residual <= {TOL:g}, recomputed with a fresh HVP). "
             f"Produced by `python -m theory_checks.curvature_vs_beta_224`; table `{CSV}`, figure "
             "`curvature_vs_beta_224.png`. CPU, shared machine.", "",
             "| beta | median abs(kappa_max) | min | max | median norm of grad g_k | HVPs (batch) | seconds (batch) |",
             "|---|---|---|---|---|---|---|"]
    for b in betas:
        sel = [r for r in rows if r["beta"] == b]
        k = [r["kappa_max"] for r in sel]
        lines.append(f"| {b:g} | {median[b]:.4g} | {min(k):.4g} | {max(k):.4g} | "
                     f"{np.median([r['grad_norm'] for r in sel]):.4g} | {int(sel[0]['hvps'])} | {sel[0]['batch_seconds']:.0f} |")
    fmt = (lambda v: "n/a" if math.isnan(v) else f"{v:.2f}")
    lines += ["", f"Fitted slope of log10 median |kappa_max| against log10 beta: {fmt(slopes['slope_all'])} over all "
              f"betas, {fmt(slopes['slope_large_beta'])} for beta >= 10. Worst relative residual {worst:.2g} "
              f"(accepted: {10 * TOL:g}).", "", "![curvature against beta at 224](curvature_vs_beta_224.png)", ""]
    (out / "section.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m theory_checks.curvature_vs_beta_224",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--betas", type=float, nargs="*", default=list(BETAS))
    parser.add_argument("--size", type=int, default=224, help="image side (224: the paper's; smaller for a smoke run)")
    parser.add_argument("--images", type=int, default=IMAGES)
    args = parser.parse_args(argv)
    measure(args.out, args.betas, args.size, args.images)
    write_section(args.out, read_rows(args.out / CSV))  # every beta in the table, asked for now or before


if __name__ == "__main__":
    main()
