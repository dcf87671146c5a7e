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
    return {"methods": methods, "missing": missing, "n": 8, "batch": 8, "steps": 100, "lr_scale": 3.0,
            "note": "VGG trained on the faces data set, N=8 pairs per method, 100 Adam steps at 3x the Table-1 rate "
                    "(paper Table 3: CIFAR-10, 1500 steps)."}


def tasks(cfg: dict) -> list[dict]:
    return attack_tasks(cfg, cfg["methods"], datasets=("faces",))


def figures(run) -> None:
    box_figure(run, [("map_pcc", "PCC(h_adv, h_t)"), ("map_ssim", "SSIM(h_adv, h_t)"),
                     ("image_ssim", "SSIM(x_adv, x)")], run.path("faces.png"))


def claims(run) -> list[dict]:
    return [manipulation_claim(run, f"faces, {m}", "faces.png", "supp. Fig. 13: LRP on CIFAR-10 manipulated "
                               "as on ImageNet", method=m) for m in run.levels("method")]
