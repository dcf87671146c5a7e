"""Figure 5 and supplement Figs. 15-19: is attacking the beta-smoothed (beta = 0.8) or the SmoothGrad
explanation harder than attacking the plain method? Three arms on the same pairs, compared per pair:

* ``paper``: each variant at its own table's learning rate and steps (Table 1 plain, Table 5 beta,
  Table 4 SmoothGrad);
* ``equal_lr``: the smoothed variants at the plain method's (Table 1) learning rate and steps;
* ``linf``: every variant at Table 1's rate and steps with the same L-inf budget (the engine's ``linf``).
"""
from __future__ import annotations

import numpy as np

from experiments.common import (attack_batch, available, batches, bounds, claim, run_attack_task, variant_options)
from experiments.stats import median_ci, paired_difference, verdict
from geomexpl import attack

TITLE = "attacks on the smoothed explanations themselves (Fig. 5 left/centre, supp. Figs. 15-19)"
VARIANTS = ("plain", "beta", "smoothgrad")
ARMS = {"paper": VARIANTS, "equal_lr": ("beta", "smoothgrad"), "linf": VARIANTS}


def config(quick: bool) -> dict:
    methods, missing = available(("gradient", "lrp"))
    if quick:
        return {"methods": methods[:1], "missing": missing, "n": 2, "batch": 2, "steps": 3, "lr_scale": 2.0,
                "sg_samples": 2, "linf": 0.1, "note": "quick."}
    return {"methods": methods, "missing": missing, "n": 32, "batch": 32, "rate": "unit", "sg_samples": 10,
            "linf": 8 / 255,
            "note": "digits VGG, N=32 pairs per method, variant and arm (paper: 100 pairs); arm 'paper': the steps "
            "and rates of Tables 1, 5 and 4; arm 'equal_lr': the smoothed variants at Table 1's steps and rate; arm "
            "'linf': every variant at Table 1's steps and rate with |x_adv - x|_inf <= 8/255 (pixel range [0, 1]); "
            "rates in [0, 1] units (x 0.226); SmoothGrad with 10 noise samples (supplement D), noise level 0.2."}


def tasks(cfg: dict) -> list[dict]:
    return [{"task": f"{m}/{arm}/{v}/{a}-{b}", "arch": "vgg", "dataset": "digits", "method": m, "variant": v,
             "arm": arm, "start": a, "stop": b}
            for m in cfg["methods"] for arm, variants in ARMS.items() for v in variants
            for a, b in batches(cfg["n"], cfg["batch"])]


def run_task(cfg: dict, task: dict, device, workdir) -> list[dict]:
    """One variant of one arm; the paper arm is :func:`run_attack_task` (each table's own rate)."""
    if task["arm"] == "paper":
        rows = run_attack_task(cfg, task, device, workdir)
    else:
        method = task["method"]
        opts = variant_options(cfg, task["variant"], method, "vgg")
        if task["arm"] == "linf":
            opts["linf"] = cfg["linf"] * (bounds("digits")[1][0] - bounds("digits")[0][0])
        plain = attack.preset(method)  # Table 1's row: its steps and rate for every variant of these arms
        _, rows = attack_batch(cfg, method, task["start"], task["stop"], device, steps=cfg.get("steps") or plain.steps,
                               lr=plain.rate(cfg.get("rate", "table")) * cfg.get("lr_scale", 1.0), **opts)
        rows = [{**row, "variant": task["variant"]} for row in rows]
    return [{**row, "arm": task["arm"]} for row in rows]


ARM_TEXT = {"paper": "each table's own learning rate", "equal_lr": "the plain method's learning rate and steps",
            "linf": "Table 1's rate and the same L-inf budget"}


def _paired(run, method: str, variant: str, arm: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(plain, smoothed) values of ``column`` on the pairs both attacked; the equal-rate arm's plain
    attack is the paper arm's (Table 1's rate is the plain method's own)."""
    base = "linf" if arm == "linf" else "paper"
    plain = {r["example"]: float(r[column]) for r in run.select(method=method, variant="plain", arm=base)}
    other = {r["example"]: float(r[column]) for r in run.select(method=method, variant=variant, arm=arm)}
    common = sorted(set(plain) & set(other), key=int)
    return np.array([plain[e] for e in common]), np.array([other[e] for e in common])


def figures(run) -> None:
    from matplotlib.figure import Figure

    from geomexpl.plot import outside_legend

    fig = Figure(figsize=(4.0 * len(ARMS) + 1.6, 3.9), layout="constrained")
    for ax, arm in zip(fig.subplots(1, len(ARMS), sharey=True), ARMS):
        for method, colour in zip(run.levels("method"), ("tab:blue", "tab:orange", "tab:green")):
            for variant, marker in (("beta", "o"), ("smoothgrad", "^")):
                plain, smooth = _paired(run, method, variant, arm, "map_pcc")
                ax.scatter(smooth, plain, marker=marker, color=colour, label=f"{method}: {variant}", alpha=0.7)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlim=(-0.05, 1.0), ylim=(-0.05, 1.0), xlabel="PCC(h_adv, h_t), smoothed explanation",
               title=f"{arm}: {ARM_TEXT[arm]}")
        ax.title.set_fontsize(8)
    fig.axes[0].set_ylabel("PCC(h_adv, h_t), plain explanation")
    fig.suptitle(f"one marker per pair (N={run.cfg['n']} per method); above the diagonal: the smoothed explanation "
                 f"was attacked less well; {run.cfg['steps']} Adam steps", fontsize=9)
    outside_legend(fig.axes[-1])
    fig.savefig(run.path("smoothed_vs_plain.png"), dpi=120, bbox_inches="tight")


def claims(run) -> list[dict]:
    """Per method, smoothed variant and arm: the paired bootstrap of PCC(plain) - PCC(smoothed) > 0."""
    out = []
    for method in run.levels("method"):
        for variant in ("beta", "smoothgrad"):
            for arm in ARMS:
                plain, smooth = _paired(run, method, variant, arm, "map_pcc")
                if not plain.size:
                    continue
                diff = paired_difference(plain, smooth)
                s_plain, s_smooth = _paired(run, method, variant, arm, "image_ssim")
                out.append(claim(
                    f"{method}, arm {arm} ({ARM_TEXT[arm]}): attacking the {variant}-smoothed map reaches the "
                    f"target less well than attacking the plain one",
                    "Fig. 5 / supp. Fig. 17: markers clearly left of the diagonal (lower PCC when smoothed)",
                    f"PCC to target plain {median_ci(plain)}, {variant} {median_ci(smooth)}; paired median "
                    f"difference plain - {variant} {diff}; SSIM(x_adv, x) plain - {variant} "
                    f"{paired_difference(s_plain, s_smooth)}",
                    verdict(diff, "difference"), "steps plain / smoothed: " + " / ".join(
                        "{:g}".format(run.values("steps", method=method, variant=v, arm=a)[0])
                        for v, a in (("plain", "linf" if arm == "linf" else "paper"), (variant, arm))),
                    "smoothed_vs_plain.png"))
    return out
