"""Figure 4 and supplement Figure 14: smoothing undoes a manipulation of the unsmoothed method.

x_adv is made for the plain method; its beta-smoothed map (beta decreasing) and its SmoothGrad map
(noise level increasing) are then compared with the target map and with the original map of x
smoothed the same way.
"""
from __future__ import annotations

import numpy as np
import torch

from experiments.common import attack_batch, available, batches, claim, method_options, model
from experiments.stats import combine, paired_difference, verdict
from geomexpl import metrics
from geomexpl.explain import explain, relevance_map

TITLE = "beta-smoothing and SmoothGrad undo the manipulation (Fig. 4, supplement Fig. 14)"


def config(quick: bool) -> dict:
    methods, missing = available(("gradient", "lrp"))
    if quick:
        return {"methods": methods, "missing": missing, "n": 2, "batch": 2, "steps": 3, "lr_scale": 2.0,
                "betas": [100.0, 1.0], "noise_levels": [0.0, 0.2], "sg_samples": 2, "note": "quick."}
    return {"methods": methods, "missing": missing, "n": 32, "batch": 32, "rate": "unit",
            "betas": [1000.0, 100.0, 30.0, 10.0, 5.0, 3.0, 2.0, 1.0, 0.5],
            "noise_levels": [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5], "sg_samples": 10,
            "note": "digits VGG, N=32 pairs per method, Table 1's preset (1500 Adam steps) at the rate in [0, 1] "
                    "units (x 0.226), SmoothGrad with 10 samples as in supplement Fig. 14."}


def tasks(cfg: dict) -> list[dict]:
    return [{"task": f"{m}/{a}-{b}", "method": m, "start": a, "stop": b}
            for m in cfg["methods"] for a, b in batches(cfg["n"], cfg["batch"])]


def run_task(cfg: dict, task: dict, device, workdir) -> list[dict]:
    method = task["method"]
    result, _ = attack_batch(cfg, method, task["start"], task["stop"], device)
    net, opts = model("vgg", "digits", str(device)), method_options(method, "vgg", "digits", str(device))
    settings = [("beta", b, {"beta": b}) for b in cfg["betas"]] + [
        ("noise", s, {"smoothgrad": cfg["sg_samples"], "noise_level": s} if s > 0 else {}) for s in cfg["noise_levels"]]
    rows = []
    for kind, value, smooth in settings:
        adv, orig = (relevance_map(explain(net, z, method, result.target, **smooth, **opts,  # same noise for both
                                           generator=torch.Generator(z.device).manual_seed(cfg["seed"])))
                     for z in (result.x_adv, result.x))
        cols = {"pcc_target": metrics.pcc(adv, result.target_map), "pcc_original": metrics.pcc(adv, orig),
                "pcc_original_relu": metrics.pcc(adv, result.map_x)}
        cols = {k: v.cpu().tolist() for k, v in cols.items()}
        rows += [{"example": task["start"] + i, "method": method, "kind": kind, "value": value,
                  **{k: v[i] for k, v in cols.items()}} for i in range(len(result.x))]
    return rows


def _curves(run, kind: str, grid) -> dict:
    ys = {}
    for m in run.levels("method"):
        for col, label in (("pcc_target", "target"), ("pcc_original", "original")):
            ys[f"{m}: {label}"] = np.stack([run.values(col, method=m, kind=kind, value=v) for v in grid], axis=1)
    return ys


def _grids(run) -> dict:
    return {"beta": [float(b) for b in run.cfg["betas"]], "noise": [float(s) for s in run.cfg["noise_levels"]]}


def figures(run) -> None:
    from geomexpl.plot import percentile_curves

    grids = _grids(run)
    fig = percentile_curves(grids["beta"], _curves(run, "beta", grids["beta"]), logx=True,
                            xlabel="beta (decreasing: more smoothing)", ylabel="PCC of the manipulated map")
    fig.axes[0].invert_xaxis()
    fig.savefig(run.path("beta.png"), dpi=120, bbox_inches="tight")
    percentile_curves([max(s, 1e-3) for s in grids["noise"]], _curves(run, "noise", grids["noise"]),
                      run.path("noise.png"), logx=True, xlabel="SmoothGrad noise level (0 plotted at 1e-3)",
                      ylabel="PCC of the manipulated map")


def crossing(grid, target: np.ndarray, original: np.ndarray) -> str:
    """Where the median curves cross: the first grid interval at whose end the median PCC with the
    original exceeds the median PCC with the target, having been below it at the start."""
    t, o = np.nanmedian(target, 0), np.nanmedian(original, 0)
    if o[0] >= t[0]:
        return "the curves start crossed (original >= target before smoothing)"
    for k in range(1, len(grid)):
        if o[k] > t[k]:
            return f"the median curves cross between {grid[k - 1]:g} and {grid[k]:g}"
    return "the median curves never cross within the grid"


def claims(run) -> list[dict]:
    """Per example, d = PCC(map, original) - PCC(map, target): the curves cross when the median d is
    below 0 without smoothing (first grid point) and above 0 at the strongest smoothing (last)."""
    out = []
    for kind, what in (("beta", "beta decreases"), ("noise", "noise grows")):
        grid = _grids(run)[kind]
        curves = _curves(run, kind, grid)
        for m in run.levels("method"):
            t, o = curves[f"{m}: target"], curves[f"{m}: original"]
            first, last = paired_difference(o[:, 0], t[:, 0]), paired_difference(o[:, -1], t[:, -1])
            parts = [verdict(first, "difference", above=False), verdict(last, "difference", above=True)]
            out.append(claim(
                f"{m}: as {what}, the manipulated map loses the target and returns to the original (curves cross)",
                "Fig. 4 / supp. Fig. 14: PCC with target falls, PCC with original rises (curves cross)",
                f"median PCC with target {np.nanmedian(t[:, 0]):.2f} -> {np.nanmedian(t[:, -1]):.2f}, with original "
                f"{np.nanmedian(o[:, 0]):.2f} -> {np.nanmedian(o[:, -1]):.2f} ({kind} {grid[0]:g} -> {grid[-1]:g}); "
                f"median paired PCC(original) - PCC(target) at {grid[0]:g}: {first}, at {grid[-1]:g}: {last}; "
                f"{crossing(grid, t, o)}",
                combine(parts), f"below 0 at {grid[0]:g}: {parts[0]}; above 0 at {grid[-1]:g}: {parts[1]}",
                f"{kind}.png"))
    return out
