"""Figure 7 / supplement Figure 21: MoRF pixel flipping on the test set for the gradient, its
beta-smoothed version (beta = 1), SmoothGrad (noise level 0.2) and random maps."""
from __future__ import annotations

import numpy as np
import torch

from experiments.common import claim, images, model

TITLE = "pixel flipping: beta-smoothing and SmoothGrad vs gradient vs random (Fig. 7, supp. Fig. 21)"
KINDS = ("gradient", "beta_1", "smoothgrad_0.2", "random")


def config(quick: bool) -> dict:
    if quick:
        return {"images": 8, "flip_steps": 5, "sg_samples": 2, "random_seeds": 2, "note": "quick."}
    return {"images": 360, "flip_steps": 21, "sg_samples": 20, "random_seeds": 5,
            "note": "all 360 digits test images, VGG, 21 flipping fractions, pixels set to 0 (the black background); "
                    "SmoothGrad with 20 samples; 5 random-map seeds."}


def tasks(cfg: dict) -> list[dict]:
    return [{"task": k, "kind": k} for k in KINDS]


def _maps(kind: str, net, x, labels, cfg, seed: int) -> list[torch.Tensor]:
    from geomexpl.explain import explain, relevance_map
    from geomexpl.metrics import random_maps

    if kind == "random":
        return [random_maps(x[:, 0], torch.Generator(x.device).manual_seed(seed + s)) for s in range(cfg["random_seeds"])]
    smooth = {"gradient": {}, "beta_1": {"beta": 1.0},
              "smoothgrad_0.2": {"smoothgrad": cfg["sg_samples"], "noise_level": 0.2}}[kind]
    return [torch.cat([relevance_map(explain(net, x[i:i + 32], "gradient", labels[i:i + 32], **smooth))
                       for i in range(0, len(x), 32)])]


def run_task(cfg: dict, task: dict, device, workdir) -> list[dict]:
    from geomexpl.metrics import pixel_flipping

    net, (x, labels) = model("vgg", "digits", str(device)), images("digits", "test", str(device))
    x, labels = x[: cfg["images"]], labels[: cfg["images"]]
    rows = []
    for rep, maps in enumerate(_maps(task["kind"], net, x, labels, cfg, cfg["seed"])):
        fractions, acc = pixel_flipping(net, x, labels, maps, steps=cfg["flip_steps"])
        rows += [{"kind": task["kind"], "repeat": rep, "fraction": float(f), "accuracy": float(a)}
                 for f, a in zip(fractions.tolist(), acc.tolist())]
    return rows


def finish(run) -> list[dict]:
    from geomexpl.plot import morf_curves

    fractions = np.unique(run.values("fraction"))
    curves = {k: np.stack([run.values("accuracy", kind=k, repeat=r) for r in
                           sorted({int(row["repeat"]) for row in run.select(kind=k)})]) for k in run.levels("kind")}
    morf_curves(fractions, {k: (v if len(v) > 1 else v[0]) for k, v in curves.items()}, run.path("morf.png"))
    area = {k: float(np.trapezoid(v.mean(0), fractions)) for k, v in curves.items()}
    ours = "area under the MoRF curve (lower is better): " + ", ".join(f"{k} {a:.3f}" for k, a in area.items())
    smooth_better = area["beta_1"] < area["gradient"] and area["smoothgrad_0.2"] < area["gradient"]
    comparable = abs(area["beta_1"] - area["smoothgrad_0.2"]) < 0.1 * area["gradient"]
    return [claim("beta-smoothed (beta=1) and SmoothGrad maps beat the gradient on pixel flipping",
                  "Fig. 7 / supp. Fig. 21: beta-smoothing better than gradient, comparable to SmoothGrad",
                  ours, "agree" if smooth_better and comparable else "partly" if smooth_better else "disagree",
                  "" if smooth_better else "on this digits net the smoothed maps do not remove the class faster",
                  "morf.png"),
            claim("every explanation beats random maps", "Fig. 21: all curves below the random baseline", ours,
                  "agree" if all(area[k] < area["random"] for k in area if k != "random") else "disagree", "",
                  "morf.png")]
