"""Figure 5 and supplement Figs. 15-19: attacking the beta-smoothed (beta = 0.8) and the SmoothGrad
explanation directly is harder than attacking the plain method (same pairs, compared per example)."""
from __future__ import annotations

import numpy as np

from experiments.common import attack_tasks, available, claim, run_attack_task, spread

TITLE = "attacks on the smoothed explanations themselves (Fig. 5 left/centre, supp. Figs. 15-19)"
run_task = run_attack_task
VARIANTS = ("plain", "beta", "smoothgrad")


def config(quick: bool) -> dict:
    methods, missing = available(("gradient", "lrp"))
    if quick:
        return {"methods": methods[:1], "missing": missing, "n": 2, "batch": 2, "steps": 3, "lr_scale": 2.0,
                "sg_samples": 2, "note": "quick."}
    return {"methods": methods, "missing": missing, "n": 8, "batch": 8, "steps": 100, "lr_scale": 3.0,
            "sg_samples": 4, "note": "digits VGG, N=8 pairs per method and variant, 100 Adam steps for every variant "
            "at 3x the learning rates of Tables 1, 4 and 5 (paper: 1500/500 steps, 100 pairs); SmoothGrad with 4 "
            "noise samples, noise level 0.2."}


def tasks(cfg: dict) -> list[dict]:
    return attack_tasks(cfg, cfg["methods"], variants=VARIANTS)


def _paired(run, method: str, variant: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    plain = {r["example"]: float(r[column]) for r in run.select(method=method, variant="plain")}
    other = {r["example"]: float(r[column]) for r in run.select(method=method, variant=variant)}
    common = sorted(set(plain) & set(other))
    return np.array([plain[e] for e in common]), np.array([other[e] for e in common])


def finish(run) -> list[dict]:
    from matplotlib.figure import Figure

    columns = (("map_pcc", "PCC(h_adv, h_t)"), ("image_ssim", "SSIM(x_adv, x)"))
    fig = Figure(figsize=(4.2 * len(columns), 3.8), layout="constrained")
    claims = []
    for ax, (column, label) in zip(fig.subplots(1, len(columns)), columns):
        for method in run.levels("method"):
            for variant, marker in (("beta", "o"), ("smoothgrad", "^")):
                plain, smooth = _paired(run, method, variant, column)
                ax.scatter(smooth, plain, marker=marker, label=f"{method}: {variant}", alpha=0.7)
                if column == "map_pcc" and plain.size:
                    left = float(np.mean(smooth < plain))
                    claims.append(claim(
                        f"{method}: attacking the {variant}-smoothed map reaches the target less well than the plain one",
                        "Fig. 5 / supp. Fig. 17: markers clearly left of the diagonal (lower PCC when smoothed)",
                        f"PCC to target plain {spread(plain)}, {variant} {spread(smooth)}; "
                        f"{left:.0%} of examples left of the diagonal",
                        "agree" if left >= 0.75 else "partly" if left > 0.5 else "disagree",
                        f"{run.cfg['steps']} steps per variant, N={plain.size}", "smoothed_vs_plain.png"))
        lims = [0, 1]
        ax.plot(lims, lims, "k--", lw=0.8)
        ax.set_xlabel(f"{label}, smoothed explanation")
        ax.set_ylabel(f"{label}, plain explanation")
        ax.legend(fontsize=7)
    fig.savefig(run.path("smoothed_vs_plain.png"), dpi=110)
    for method in run.levels("method"):
        plain, beta = _paired(run, method, "beta", "image_ssim")
        claims.append(claim(f"{method}: the perturbation of the beta-smoothed attack is comparable or larger",
                            "supp. Fig. 19: image similarity comparable or slightly worse when smoothed",
                            f"SSIM(x_adv, x) plain {spread(plain)}, beta {spread(beta)}",
                            "agree" if np.median(beta) <= np.median(plain) + 0.02 else "disagree",
                            "Table 5's learning rate for the beta-smoothed attack is 4x below Table 1's, so in the "
                            "same steps it moves the image less (and reaches the target less)",
                            "smoothed_vs_plain.png"))
    return claims
