"""Supplement C.2: the manipulation works on a second data set (the paper: CIFAR-10; here the
bundled faces data set, LFW faces vs non-faces, 32x32 grey)."""
from __future__ import annotations

from experiments.common import attack_tasks, available, box_figure, manipulation_claim, run_attack_task

TITLE = "second data set: faces (supp. C.2; the paper used CIFAR-10)"
run_task = run_attack_task


def config(quick: bool) -> dict:
    methods, missing = available(("gradient", "lrp"))
    if quick:
        return {"methods": methods[:1], "missing": missing, "n": 2, "batch": 2, "steps": 3, "lr_scale": 3.0,
                "note": "quick."}
    return {"methods": methods, "missing": missing, "n": 32, "batch": 32, "rate": "unit", "variant": "table3",
            "note": "VGG trained on the faces data set (32x32 grey, 10 classes: CIFAR-10's map size and output count), "
                    "N=32 pairs per method (paper: 100 CIFAR-10 pairs for LRP); LRP with Table 3 (1500 steps, "
                    "factors 1e7, 1e2 unscaled), the gradient with Table 1 (1500 steps); rates in [0, 1] units "
                    "(x 0.226)."}


def tasks(cfg: dict) -> list[dict]:
    return attack_tasks(cfg, cfg["methods"], datasets=("faces",), variants=(cfg.get("variant", "plain"),))


def figures(run) -> None:
    box_figure(run, [("map_pcc", "PCC(h_adv, h_t)"), ("map_ssim", "SSIM(h_adv, h_t)"),
                     ("image_ssim", "SSIM(x_adv, x)")], run.path("faces.png"))


def claims(run) -> list[dict]:
    return [manipulation_claim(run, f"faces, {m}", "faces.png", "supp. Fig. 13: LRP on CIFAR-10 manipulated "
                               "as on ImageNet", method=m) for m in run.levels("method")]
