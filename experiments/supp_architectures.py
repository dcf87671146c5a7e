"""Supplement C.1 (Figs. 7-12, Table 2): the gradient explanation is manipulable on VGG, ResNet,
AlexNet and DenseNet alike (DenseNet with beta growing from 30 to 300)."""
from __future__ import annotations

from experiments.common import attack_tasks, box_figure, manipulation_claim, run_attack_task

TITLE = "other architectures: VGG, ResNet, AlexNet, DenseNet (supp. C.1)"
ARCHS = ("vgg", "resnet", "alexnet", "densenet")
run_task = run_attack_task


def config(quick: bool) -> dict:
    if quick:
        return {"archs": ["vgg", "resnet"], "n": 2, "batch": 2, "steps": 3, "lr_scale": 3.0, "note": "quick."}
    return {"archs": list(ARCHS), "n": 4, "batch": 4, "steps": 100, "lr_scale": 3.0,
            "note": "gradient method on the digits zoo nets, N=4 pairs per architecture, 100 Adam steps at 3x the "
                    "Table-1 rate (paper Table 2: 1500-4000 steps, 100 ImageNet pairs); softmax output term."}


def tasks(cfg: dict) -> list[dict]:
    return attack_tasks(cfg, ["gradient"], archs=cfg["archs"])


def figures(run) -> None:
    box_figure(run, [("map_pcc", "PCC(h_adv, h_t)"), ("image_ssim", "SSIM(x_adv, x)"),
                     ("logit_change", "|g~(x_adv) - g~(x)|")], run.path("architectures.png"), group_key="arch")


def claims(run) -> list[dict]:
    return [manipulation_claim(run, arch, "architectures.png", "supp. Figs. 7-8: comparable similarity for all "
                               "four architectures", arch=arch) for arch in run.levels("arch")]
