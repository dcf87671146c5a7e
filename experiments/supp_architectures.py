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
    return {"archs": list(ARCHS), "n": 32, "batch": 32, "rate": "unit", "variant": "table2",
            "note": "gradient method on the digits zoo nets, N=32 pairs per architecture, Table 2's row per "
                    "architecture (VGG 1500, AlexNet 4000, DenseNet 2000 (beta 30 -> 300), ResNet 2000 Adam steps; "
                    "output factor 10 on the logits) at the rate in [0, 1] units (x 0.226)."}


def tasks(cfg: dict) -> list[dict]:
    return attack_tasks(cfg, ["gradient"], archs=cfg["archs"], variants=(cfg.get("variant", "plain"),))


def figures(run) -> None:
    box_figure(run, [("map_pcc", "PCC(h_adv, h_t)"), ("image_ssim", "SSIM(x_adv, x)"),
                     ("logit_change", "|g~(x_adv) - g~(x)|")], run.path("architectures.png"), group_key="arch")


def claims(run) -> list[dict]:
    return [manipulation_claim(run, arch, "architectures.png", "supp. Figs. 7-8: comparable similarity for all "
                               "four architectures", arch=arch) for arch in run.levels("arch")]
