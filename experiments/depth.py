"""Does manipulability grow with depth? VGG-style nets of 4 to 19 convolutions on digits (issue 16).

The papers bound the curvature of the level sets by beta * C~ / c (Theorem 1), and C~ grows with the
number of layers; they do not say that the *measured* curvature grows. Here every net of
``nets.vgg_of_depth(L)`` (one width for all convolutions, 5 max-pooled stages) is trained on digits
with three seeds, and for each (depth, seed) we measure

* the median |kappa_max| of its softplus twin at beta = 10 over the first test images of the run's
  pairs (torch Lanczos, relative tolerance 1e-4), on the level set of the ReLU net's predicted class;
* the map PCC the 'gradient' attack reaches under an L-inf budget of 8/255 (Table 1: 1500 steps,
  beta growth 10 -> 100, the rate in [0, 1] units), on the run's seeded pairs.

Spearman's rho of each against depth over the (depth, seed) points, with a paired bootstrap interval,
gives the verdict. The trained weights are kept in the run folder (``weights/``), so the tasks of a
net can run in any order and a resumed run does not retrain.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common import attack_batch, batches, claim, top_curvature
from experiments.stats import spearman_ci, verdict

TITLE = "depth study: curvature and manipulability of VGG-style nets of 4-19 convolutions (digits)"
EXTENDS = ("n", "note", "seeds")


def config(quick: bool) -> dict:
    from geomexpl.nets.zoo import DEPTH_STAGES

    base = {"method": "gradient", "width": 16, "beta": 10.0, "linf": 8 / 255, "rate": "unit"}
    if quick:
        return {**base, "depths": [4, 8], "seeds": [0], "epochs": 1, "n": 2, "batch": 2, "kappa_images": 2,
                "steps": 3, "note": "quick: 1 epoch, 2 pairs, 3 steps."}
    return {**base, "depths": list(DEPTH_STAGES), "seeds": [0, 1, 2], "epochs": 30, "n": 32, "batch": 32,
            "kappa_images": 16,
            "note": "VGG-style nets of 4, 8, 11, 13, 16 and 19 convolutions, all 16 channels wide, trained on digits "
                    "(30 epochs, seeds 0-2); |kappa_max| of the beta=10 twin at 16 test images per net; the gradient "
                    "attack with Table 1's preset (1500 steps, beta growth 10 -> 100) at the rate in [0, 1] units "
                    "(1e-3 x 0.226) under L-inf 8/255 on N=32 pairs per net."}


def tasks(cfg: dict) -> list[dict]:
    """Per (seed, depth): the curvature task (which trains the net if needed), then its attack batches."""
    out = []
    for seed in cfg["seeds"]:
        for depth in cfg["depths"]:
            out.append({"task": f"depth{depth}/seed{seed}/kappa", "kind": "kappa", "depth": depth, "seed": seed})
            out += [{"task": f"depth{depth}/seed{seed}/attack/{a}-{b}", "kind": "attack", "depth": depth,
                     "seed": seed, "start": a, "stop": b} for a, b in batches(cfg["n"], cfg["batch"])]
    return out


def weight_file(workdir: Path, depth: int, seed: int) -> Path:
    return Path(workdir) / "weights" / f"vgg{depth}-digits-seed{seed}.pt"


@functools.lru_cache(maxsize=None)
def depth_net(workdir: str, depth: int, seed: int, width: int, epochs: int,
              device: str) -> tuple[torch.nn.Module, dict]:
    """The trained net of (depth, seed) and its training metadata: loaded from the run folder, else
    trained (seeded, +-2 pixel shifts, Adam; geomexpl.nets.weights.train) and saved there atomically."""
    from geomexpl.nets import load_weights, save_weights, vgg_of_depth, weights

    model = vgg_of_depth(depth, width=width)
    path = weight_file(Path(workdir), depth, seed)
    if path.is_file():
        meta = load_weights(model, path)
    else:
        meta = weights.train(model, "digits", epochs=epochs, seed=seed, progress=False, device=device)
        model.cpu()
        save_weights(model, path, {**meta, "arch": f"vgg-{depth}", "width": width})
    return model.to(device).eval().requires_grad_(False), meta


def run_task(cfg: dict, task: dict, device, workdir: Path) -> list[dict]:
    dev = str(device)
    net, meta = depth_net(str(workdir), task["depth"], task["seed"], cfg["width"], cfg["epochs"], dev)
    key = {"depth": task["depth"], "seed": task["seed"]}
    if task["kind"] == "kappa":  # rows of one shape for every task: no attack steps or rate here
        rows = _kappa_rows(cfg, net, dev, key) + [
            {**key, "example": "", "metric": "test_accuracy", "value": meta["test_accuracy"]},
            {**key, "example": "", "metric": "train_seconds", "value": meta["train_seconds"]}]
        return [{**r, "steps": "", "lr": ""} for r in rows]
    _, rows = attack_batch(cfg, cfg["method"], task["start"], task["stop"], device, net=net, linf=cfg["linf"])
    return [{**key, "example": r["example"], "metric": m, "value": r[m], "steps": r["steps"], "lr": r["lr"]}
            for r in rows for m in ("map_pcc", "image_ssim", "linf", "class_kept")]


def _kappa_rows(cfg: dict, net, device: str, key: dict) -> list[dict]:
    start = time.perf_counter()
    kappa, _ = top_curvature(cfg, net, cfg["beta"], device)
    seconds = time.perf_counter() - start
    return [{**key, "example": i, "metric": "kappa_max", "value": float(k)} for i, k in
            enumerate(kappa.cpu().tolist())] + [
        {**key, "example": "", "metric": "kappa_seconds", "value": seconds}]


def per_net(run, metric: str) -> list[tuple[int, int, float]]:
    """(depth, seed, median of ``metric`` over the net's examples) for every net with rows."""
    out = []
    for depth in run.cfg["depths"]:
        for seed in run.cfg["seeds"]:
            v = run.values("value", depth=depth, seed=seed, metric=metric)
            if v.size:
                out.append((depth, seed, float(np.median(v))))
    return out


def figures(run) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 3.4), layout="constrained")
    panels = (("kappa_max", f"median |kappa_max| of the beta={run.cfg['beta']:g} twin", True),
              ("map_pcc", f"median map PCC at L-inf {run.cfg['linf'] * 255:.0f}/255", False),
              ("test_accuracy", "test accuracy", False))
    for ax, (metric, label, log) in zip(fig.subplots(1, 3), panels):
        for seed in run.cfg["seeds"]:
            points = [(d, v) for d, s, v in per_net(run, metric) if s == seed]
            if points:
                ax.plot(*zip(*points), marker="o", label=f"seed {seed}")
        ax.set_xlabel("convolution layers")
        ax.set_title(label, fontsize=9)
        ax.set_xticks(run.cfg["depths"])
        if log:
            ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)  # off the data
    fig.suptitle("VGG-style nets on digits, one point per (depth, seed)", fontsize=9)
    fig.savefig(run.path("depth.png"), dpi=120, bbox_inches="tight")


def claims(run) -> list[dict]:
    out = []
    for metric, what, paper in (
            ("kappa_max", "the measured |kappa_max| (beta = 10 twin) grows with depth",
             "Theorem 1 bounds |kappa| by beta C~/c, C~ growing with depth; the measured curvature is not claimed"),
            ("map_pcc", f"manipulability (map PCC at L-inf {run.cfg['linf'] * 255:.0f}/255) grows with depth",
             "not claimed: the bound grows with depth, the papers attack fixed architectures")):
        points = per_net(run, metric)
        rho = spearman_ci([p[0] for p in points], [p[2] for p in points])
        medians = "; ".join(f"{d}: {np.median([v for dd, _, v in points if dd == d]):.3g}"
                            for d in dict.fromkeys(p[0] for p in points))
        out.append(claim(what, paper, f"Spearman rho of depth against the per-net median, {rho}; median over seeds by "
                         f"depth: {medians}", verdict(rho, "spearman"),
                         f"{len(points)} nets ({len(run.cfg['seeds'])} seeds x {len(run.cfg['depths'])} depths "
                         "planned)",
                         "depth.png"))
    return out
