"""Manipulation under a perceptibility budget: the map PCC each method reaches within |x_adv - x|_inf <= eps.

The paper calls its perturbations "hardly perceptible" without a budget. Here every attack is
projected onto the L-inf ball of eps = 2/255, 4/255 and 8/255 around x after each Adam step (and
into the valid range), with Table 1's preset (steps, beta growth) at the rate in [0, 1] units
(x 0.226, see geomexpl.attack.presets), on the digits VGG (all six methods) and the 64x64 photo VGG
('gradient', 'lrp', 'guided_backprop'), N seeded pairs per cell.
"""
from __future__ import annotations

import numpy as np

from experiments.common import PAPER_METHODS, attack_batch, available, batches, claim
from experiments.stats import combine, median_ci, rate_ci, verdict

TITLE = "perceptibility: the map PCC each method reaches under an L-inf budget of 2/255, 4/255 and 8/255"
EXTENDS = ("n", "note")
PHOTO_METHODS = ("gradient", "lrp", "guided_backprop")
DEAR = ("integrated_gradients",)  # 30 path points per step: its tasks run after every other


def config(quick: bool) -> dict:
    methods, missing = available(PAPER_METHODS)
    if quick:
        return {"datasets": {"digits": methods[:1], "photos": ["gradient"]}, "budgets": [8], "missing": missing,
                "n": 2, "batch": 2, "steps": 3, "rate": "unit", "note": "quick: 2 pairs, 3 steps."}
    return {"datasets": {"digits": methods, "photos": [m for m in PHOTO_METHODS if m in methods]},
            "budgets": [2, 4, 8], "missing": missing, "n": 32, "batch": 16, "rate": "unit",
            "note": "L-inf budgets of 2, 4 and 8 / 255 (pixel range [0, 1]); digits VGG (every paper method) and "
                    "64x64 photo VGG (gradient, LRP, Guided Backprop); N=32 seeded pairs per (data set, method, "
                    "budget); Table 1's preset (1500 steps; integrated gradients 500) at the rate in [0, 1] units "
                    "(x 0.226); tasks of 16 pairs, every cell's first batch before any second one, integrated "
                    "gradients last."}


def tasks(cfg: dict) -> list[dict]:
    out = [{"task": f"vgg/{dataset}/{method}/linf{budget}/{a}-{b}", "dataset": dataset, "method": method,
            "budget": budget, "start": a, "stop": b}
           for a, b in batches(cfg["n"], cfg["batch"]) for dataset, methods in cfg["datasets"].items()
           for method in methods for budget in cfg["budgets"]]
    return [t for t in out if t["method"] not in DEAR] + [t for t in out if t["method"] in DEAR]


def run_task(cfg: dict, task: dict, device, workdir) -> list[dict]:
    _, rows = attack_batch(cfg, task["method"], task["start"], task["stop"], device, dataset=task["dataset"],
                           linf=task["budget"] / 255)
    return [{**row, "budget": task["budget"]} for row in rows]


def cells(run) -> list[dict]:
    """Median map PCC (bootstrap CI), median L-inf and class-kept rate per (data set, method, budget)."""
    out = []
    for dataset in run.levels("dataset"):
        for method in run.levels("method"):
            for budget in run.cfg["budgets"]:
                where = {"dataset": dataset, "method": method, "budget": budget}
                if run.select(**where):
                    out.append({**where, "map_pcc": median_ci(run.values("map_pcc", **where)),
                                "before": float(np.median(run.values("map_pcc_before", **where))),
                                "linf": float(np.median(run.values("linf", **where))),
                                "kept": rate_ci(run.values("class_kept", **where))})
    return out


def figures(run) -> None:
    from geomexpl import runs
    from matplotlib.figure import Figure

    table = cells(run)
    runs.write_csv(run.path("summary.csv"), [
        {"dataset": c["dataset"], "method": c["method"], "budget_255": c["budget"], "n": c["map_pcc"].n,
         "map_pcc": c["map_pcc"].estimate, "map_pcc_lo": c["map_pcc"].low, "map_pcc_hi": c["map_pcc"].high,
         "map_pcc_before": c["before"], "linf": c["linf"], "class_kept": c["kept"].estimate} for c in table])
    datasets = list(dict.fromkeys(c["dataset"] for c in table))
    if not datasets:
        return
    fig = Figure(figsize=(4.2 * len(datasets), 3.6), layout="constrained")
    colours = dict(zip(PAPER_METHODS, ("tab:blue", "tab:orange", "tab:purple", "tab:green", "tab:red", "tab:brown")))
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        for method in dict.fromkeys(c["method"] for c in table if c["dataset"] == dataset):
            row = [c for c in table if c["dataset"] == dataset and c["method"] == method]
            x = np.array([c["budget"] for c in row], dtype=float)
            y = np.array([c["map_pcc"].estimate for c in row])
            err = np.array([[c["map_pcc"].estimate - c["map_pcc"].low, c["map_pcc"].high - c["map_pcc"].estimate]
                            for c in row]).T
            ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3, label=method,
                        color=colours.get(method))
        ax.axhline(0.7, color="grey", lw=0.8, ls="--")
        ax.set_xticks(run.cfg["budgets"])
        ax.set_xlabel("L-inf budget (x 1/255)")
        ax.set_ylabel("median PCC(h_adv, h_t), 95% CI")
        ax.set_title(dataset, fontsize=9)
    shown = {label: handle for ax in fig.axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(shown.values()), list(shown), loc="outside lower center", ncol=len(shown), fontsize=7)
    fig.savefig(run.path("budgets.png"), dpi=120, bbox_inches="tight")


def claims(run) -> list[dict]:
    """Per (data set, method): the map still follows the target (PCC above 0.7) under the largest budget,
    with the class kept; the smaller budgets are reported beside it."""
    out, table, top = [], cells(run), max(run.cfg["budgets"])
    for dataset in dict.fromkeys(c["dataset"] for c in table):
        for method in dict.fromkeys(c["method"] for c in table if c["dataset"] == dataset):
            row = {c["budget"]: c for c in table if c["dataset"] == dataset and c["method"] == method}
            if top not in row:
                continue
            parts = {"map PCC": verdict(row[top]["map_pcc"], "map_pcc"),
                     "class kept": verdict(row[top]["kept"], "class_kept")}
            ours = "; ".join(f"{b}/255: PCC {c['map_pcc']} (before {c['before']:.2f}), L-inf "
                             f"{c['linf'] * 255:.2f}/255, class kept {c['kept'].estimate:.0%}" for b, c in row.items())
            other = "; ".join(f"{b}/255: {verdict(c['map_pcc'], 'map_pcc')}" for b, c in row.items() if b != top)
            out.append(claim(f"{dataset}, {method}: under L-inf {top}/255 the map still follows the target",
                             "hardly perceptible perturbations suffice (no budget stated)", ours,
                             combine(parts.values()), "; ".join(f"{k}: {v}" for k, v in parts.items())
                             + (f"; map PCC at {other}" if other else ""), "budgets.png"))
    for m in run.cfg["missing"]:
        out.append(claim(f"{m}: manipulable under a budget", "yes", "not run", "not run",
                         f"{m} is not in geomexpl.explain.METHODS"))
    return out
