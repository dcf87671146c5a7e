"""Figure 7 / supplement Figure 21: MoRF pixel flipping on the test set for the gradient, its
beta-smoothed version (beta = 1), SmoothGrad (noise level 0.2) and random maps."""
from __future__ import annotations

import numpy as np
import torch

from experiments.common import claim, images, model
from experiments.stats import combine, paired_difference, rate_ci, verdict

TITLE = "pixel flipping: beta-smoothing and SmoothGrad vs gradient vs random (Fig. 7, supp. Fig. 21)"
KINDS = ("gradient", "beta_1", "smoothgrad_0.2", "random")


def config(quick: bool) -> dict:
    if quick:
        return {"images": 8, "flip_steps": 5, "sg_samples": 2, "random_seeds": 2, "note": "quick."}
    return {"images": 359, "flip_steps": 21, "sg_samples": 20, "random_seeds": 5,
            "note": "all 359 digits test images, VGG, 21 flipping fractions, pixels set to 0 (the black background); "
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
        fractions, correct = pixel_flipping(net, x, labels, maps, steps=cfg["flip_steps"], per_example=True)
        area = np.trapezoid(correct.cpu().numpy(), fractions.cpu().numpy(), axis=1)  # per image
        base = {"kind": task["kind"], "repeat": rep, "fraction": "", "accuracy": "", "example": "", "area": ""}
        rows += [{**base, "row": "curve", "fraction": float(f), "accuracy": float(a)}
                 for f, a in zip(fractions.tolist(), correct.mean(0).tolist())]
        rows += [{**base, "row": "image", "example": i, "area": float(a)} for i, a in enumerate(area.tolist())]
    return rows


def figures(run) -> None:
    from geomexpl.plot import morf_curves

    fractions = np.unique(run.values("fraction", row="curve"))
    curves = {k: np.stack([run.values("accuracy", kind=k, repeat=r, row="curve") for r in
                           sorted({int(row["repeat"]) for row in run.select(kind=k)})]) for k in run.levels("kind")}
    morf_curves(fractions, {k: (v if len(v) > 1 else v[0]) for k, v in curves.items()}, run.path("morf.png"))


def _areas(run, kind: str) -> np.ndarray:
    """Per image, the area under its MoRF correctness curve, averaged over the kind's repeats."""
    reps = sorted({int(r["repeat"]) for r in run.select(kind=kind)})
    return np.mean([run.values("area", kind=kind, repeat=r, row="image") for r in reps], axis=0)


def claims(run) -> list[dict]:
    """Paired over images: mean area(gradient) - area(smoothed) > 0 (smoothed removes the class faster)."""
    area = {k: _areas(run, k) for k in run.levels("kind")}
    ours = "area under the MoRF curve (mean over images, lower is better): " + ", ".join(
        f"{k} {rate_ci(a)}" for k, a in area.items())
    better = {k: paired_difference(area["gradient"], area[k], np.mean) for k in ("beta_1", "smoothgrad_0.2")}
    random = {k: paired_difference(area["random"], area[k], np.mean) for k in area if k != "random"}
    return [claim("beta-smoothed (beta=1) and SmoothGrad maps beat the gradient on pixel flipping",
                  "Fig. 7 / supp. Fig. 21: beta-smoothing better than gradient, comparable to SmoothGrad",
                  ours + "; paired mean area gradient - smoothed: " + ", ".join(f"{k} {d}" for k, d in better.items()),
                  combine(verdict(d, "difference") for d in better.values()), "", "morf.png"),
            claim("every explanation beats random maps", "Fig. 21: all curves below the random baseline",
                  "paired mean area random - method: " + ", ".join(f"{k} {d}" for k, d in random.items()),
                  combine(verdict(d, "difference") for d in random.values()), "", "morf.png")]
