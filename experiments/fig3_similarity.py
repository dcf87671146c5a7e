"""Figure 3: SSIM / PCC / MSE between manipulated and target maps, and between x_adv and x, per method."""
from __future__ import annotations

from experiments.common import (PAPER_METHODS, attack_tasks, available, box_figure, claim, manipulation_claim,
                                run_attack_task)
from experiments.stats import combine, median_ci, verdict

TITLE = "similarity of manipulated maps to targets and of images to originals (Fig. 3)"
run_task = run_attack_task
SKIPPED = ("integrated_gradients",)


def config(quick: bool) -> dict:
    methods, missing = available(PAPER_METHODS)
    if quick:
        return {"methods": methods[:2], "missing": missing, "n": 2, "batch": 2, "steps": 3, "lr_scale": 2.0,
                "note": "quick: 2 pairs, 3 steps."}
    return {"methods": [m for m in methods if m not in SKIPPED], "missing": missing, "skipped": list(SKIPPED),
            "n": 8, "batch": 8, "steps": 200, "lr_scale": 2.0,
            "note": "integrated gradients left out for time (30 path points make it ~30x dearer per step); "
                    "digits VGG-16-style net, N=8 pairs per method (paper: 100 ImageNet pairs), 200 Adam steps "
                    "at 2x the Table-1 learning rate (paper: 1500 / 500 steps)."}


def tasks(cfg: dict) -> list[dict]:
    return attack_tasks(cfg, cfg["methods"])


def figures(run) -> None:
    box_figure(run, [("map_ssim", "SSIM(h_adv, h_t)"), ("map_pcc", "PCC(h_adv, h_t)"), ("map_mse", "MSE(h_adv, h_t)")],
               run.path("maps.png"))
    box_figure(run, [("image_ssim", "SSIM(x_adv, x)"), ("image_pcc", "PCC(x_adv, x)"), ("image_mse", "MSE(x_adv, x)")],
               run.path("images.png"))


def claims(run) -> list[dict]:
    out = [manipulation_claim(run, m, "maps.png", "Fig. 3: target closely emulated, perturbation small "
                              "(boxes only, no numbers in the text)", method=m) for m in run.levels("method")]
    image = {m: median_ci(run.values("image_ssim", method=m)) for m in run.levels("method")}
    out.append(claim("image similarity per method", "SSIM/PCC of images close to 1, MSE small",
                     "median SSIM(x_adv, x): " + "; ".join(f"{m} {ci}" for m, ci in image.items()),
                     combine(verdict(ci, "image_ssim") for ci in image.values()), "", "images.png"))
    for m in run.cfg["missing"] + run.cfg.get("skipped", []):
        out.append(claim(f"{m}: manipulable", "yes (Fig. 3)", "not run", "not run",
                         f"{m} is not in geomexpl.explain.METHODS" if m in run.cfg["missing"] else
                         "left out of the full run for time: 30 path points make each step ~30x dearer"))
    return out
