"""Figure 3: SSIM / PCC / MSE between manipulated and target maps, and between x_adv and x, per method.

Table 1's preset for every method (1500 steps; integrated gradients 500), in both learning-rate
conventions (geomexpl.attack.presets): 'unit', the table's rate x 0.226 (the reference code's step
on ImageNet-normalised pixels, converted to [0, 1] pixels: the convention of every study here), and
'table', the rate as printed.
"""
from __future__ import annotations

from experiments.common import (PAPER_METHODS, available, batches, box_figure, claim, manipulation_claim,
                                run_attack_task)
from experiments.stats import combine, median_ci, verdict

TITLE = "similarity of manipulated maps to targets and of images to originals (Fig. 3)"
run_task = run_attack_task
EXTENDS = ("n", "note", "n_by_method")
DEAR = ("integrated_gradients",)  # 30 path points per step: its tasks run after the others of a rate


def config(quick: bool) -> dict:
    methods, missing = available(PAPER_METHODS)
    if quick:
        return {"methods": methods[:2], "missing": missing, "n": 2, "n_by_method": {}, "batch": 2, "steps": 3,
                "rates": ["unit", "table"], "note": "quick: 2 pairs, 3 steps."}
    return {"methods": methods, "missing": missing, "n": 100,  # pairs drawn; methods but gradient and LRP use 32
            "n_by_method": {m: 32 for m in methods if m not in ("gradient", "lrp")},
            "batch": 32, "rates": ["unit", "table"],
            "note": "digits VGG-16-style net, Table 1's preset (1500 Adam steps, integrated gradients 500; beta growth "
                    "10 -> 100 but for LRP), N=100 pairs for gradient and LRP and N=32 for the other methods (paper: "
                    "100 ImageNet pairs), at the rate in [0, 1] units (x 0.226, 'unit') and as printed ('table'); "
                    "tasks of 32 pairs, every method's first batch before any second one, integrated gradients "
                    "last within a rate."}


def pairs_of(cfg: dict, method: str) -> int:
    return cfg["n_by_method"].get(method, cfg["n"])


def tasks(cfg: dict) -> list[dict]:
    out = []
    for rate in cfg["rates"]:
        mine = [{"task": f"vgg/digits/{m}/{rate}/{a}-{b}", "arch": "vgg", "dataset": "digits", "method": m,
                 "variant": "plain", "rate": rate, "start": a, "stop": b, "batch": k}
                for m in cfg["methods"] for k, (a, b) in enumerate(batches(pairs_of(cfg, m), cfg["batch"]))]
        mine.sort(key=lambda t: (t["method"] in DEAR, t["batch"]))
        out += mine
    return out


def figures(run) -> None:
    for rate in run.levels("rate"):
        suffix = "" if rate == "unit" else f"_{rate}"
        box_figure(run, [("map_ssim", "SSIM(h_adv, h_t)"), ("map_pcc", "PCC(h_adv, h_t)"),
                         ("map_mse", "MSE(h_adv, h_t)")], run.path(f"maps{suffix}.png"), rate=rate)
        box_figure(run, [("image_ssim", "SSIM(x_adv, x)"), ("image_pcc", "PCC(x_adv, x)"),
                         ("image_mse", "MSE(x_adv, x)")], run.path(f"images{suffix}.png"), rate=rate)


def claims(run) -> list[dict]:
    out = []
    for rate in run.levels("rate"):
        suffix = "" if rate == "unit" else f"_{rate}"
        methods = [m for m in run.levels("method") if run.select(method=m, rate=rate)]
        out += [manipulation_claim(run, f"{m} ({rate} rate)", f"maps{suffix}.png", "Fig. 3: target closely "
                                   "emulated, perturbation small (boxes only, no numbers in the text)", method=m,
                                   rate=rate) for m in methods]
        image = {m: median_ci(run.values("image_ssim", method=m, rate=rate)) for m in methods}
        out.append(claim(f"image similarity per method ({rate} rate)", "SSIM/PCC of images close to 1, MSE small",
                         "median SSIM(x_adv, x): " + "; ".join(f"{m} {ci}" for m, ci in image.items()),
                         combine(verdict(ci, "image_ssim") for ci in image.values()), "", f"images{suffix}.png"))
    for m in run.cfg["missing"]:
        out.append(claim(f"{m}: manipulable", "yes (Fig. 3)", "not run", "not run",
                         f"{m} is not in geomexpl.explain.METHODS"))
    return out
