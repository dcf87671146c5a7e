"""Sixt et al. (2020), Figs. 4-5: modified-backprop methods whose relevance chain converges to rank
one (z+ rule: LRP-alpha1-beta0, Deep Taylor, Excitation BP; PatternAttribution) ignore the later
layers: random relevance vectors injected at the logits align (cosine similarity convergence, CSC),
the maps of the true and a random logit are near identical, and randomising the top layers barely
changes the map. The gradient and DeepLIFT do not converge. Uses geomexpl.sanity."""
from __future__ import annotations

import numpy as np

from experiments.common import available, claim, images, method_options, model
from experiments.stats import combine, median_ci, paired_difference, threshold, verdict

TITLE = "sanity checks of modified backprop: CSC, random logit, parameter randomisation (Sixt et al.)"
CONVERGING = ("lrp_alpha_beta", "deep_taylor", "excitation_backprop", "pattern_attribution")
NOT_CONVERGING = ("gradient", "deeplift")


def _sanity():
    try:
        import geomexpl.sanity as sanity
    except ImportError:
        return None
    return sanity


def config(quick: bool) -> dict:
    methods, missing = available(CONVERGING + NOT_CONVERGING + ("guided_backprop", "lrp_epsilon"))
    if _sanity() is None:
        methods, missing = [], ["geomexpl.sanity (not importable)"]
    if quick:
        return {"methods": [m for m in methods if m in ("lrp_alpha_beta", "gradient")], "missing": missing, "images": 2, "n_vectors": 2, "note": "quick."}
    return {"methods": methods, "missing": missing, "images": 16, "n_vectors": 5,
            "note": "digits VGG, 16 test images, 5 random relevance vectors per image (paper: 200 ImageNet images, "
                    "VGG-16 / ResNet-50 / a small CIFAR net); cascading randomisation from the top."}


def tasks(cfg: dict) -> list[dict]:
    return [{"task": m, "method": m} for m in cfg["methods"]]


def run_task(cfg: dict, task: dict, device, workdir) -> list[dict]:
    """Per image: the CSC (median |cos| over locations and vector pairs) at every layer, the SSIM of
    the true and a random logit's maps, and the SSIM after each cascading randomisation step."""
    import torch

    sanity, method, dev = _sanity(), task["method"], str(device)
    net, (x, y) = model("vgg", "digits", dev), images("digits", "test", dev)
    x, y = x[: cfg["images"]], y[: cfg["images"]]
    opts = method_options(method, "vgg", "digits", dev)
    gen = torch.Generator(device).manual_seed(cfg["seed"])
    rows = []
    for b in range(len(x)):  # one image at a time, so that each image gives one CSC value per layer
        csc = sanity.cosine_similarity_convergence(net, x[b:b + 1], method, n_vectors=cfg["n_vectors"],
                                                   generator=gen, **opts)
        rows += [{"method": method, "check": "csc", "example": b, "layer": e.layer, "depth": e.depth,
                  "value": e.median, "baseline": e.baseline_median, "dim": e.dim} for e in csc.layers]
    logit = sanity.random_logit(net, x, method, target=y, generator=gen, **opts)
    rows += [{"method": method, "check": "random_logit", "example": b, "layer": "logits", "depth": 0,
              "value": float(v), "baseline": float("nan"), "dim": 0} for b, v in enumerate(logit.ssim.tolist())]
    rand = sanity.parameter_randomisation(net, x, method, "cascading", generator=gen, **opts)
    rows += [{"method": method, "check": "cascading", "example": b, "layer": name, "depth": i + 1,
              "value": float(v), "baseline": float("nan"), "dim": 0}
             for i, name in enumerate(rand.layers) for b, v in enumerate(rand.ssim[i].tolist())]
    return rows


def _lowest(run, method: str) -> list[dict]:
    """CSC rows of the lowest layer with more than one channel (the deepest the vectors reach)."""
    csc = [r for r in run.select(method=method, check="csc") if int(r["dim"]) > 1]
    deepest = max((int(r["depth"]) for r in csc), default=None)
    return [r for r in csc if int(r["depth"]) == deepest]


def _by_depth(run, method: str, check: str, multi_channel: bool = False) -> tuple[np.ndarray, np.ndarray, list]:
    """(depths, values [images, depths], layer names) of one check of one method."""
    rows = [r for r in run.select(method=method, check=check) if not multi_channel or int(r["dim"]) > 1]
    depths = sorted({int(r["depth"]) for r in rows})
    names = [next(r["layer"] for r in rows if int(r["depth"]) == d) for d in depths]
    values = np.stack([[float(r["value"]) for r in rows if int(r["depth"]) == d] for d in depths], axis=1)
    return np.array(depths), values, names


def figures(run) -> None:
    from matplotlib.figure import Figure

    from geomexpl.plot import box_plots, percentile_curves

    if not run.rows:
        return
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    ax_csc, ax_logit, ax_rand = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 0.8, 1.3]})
    for m in run.levels("method"):
        depth, cos, names = _by_depth(run, m, "csc", multi_channel=True)
        percentile_curves(depth, {m: np.maximum(1 - cos, 1e-16)}, ax=ax_csc, logy=True,
                          xlabel="layers below the logits (multi-channel layers)", ylabel="1 - |cos| (median, 10-90%)")
        depth, ssim, rand_names = _by_depth(run, m, "cascading")
        percentile_curves(depth, {m: ssim}, ax=ax_rand, xlabel="layers randomised from the top, by module name",
                          ylabel="SSIM to the original map")
    ax_csc.axhline(1 - threshold("csc"), color="k", lw=0.8, ls=":")
    ax_csc.set_title("CSC: lower = converged; dotted: Sixt's |cos| 0.99", fontsize=9)
    ax_rand.set_xticks(depth, rand_names, rotation=60, ha="right", fontsize=6)
    ax_rand.set_title("cascading randomisation", fontsize=9)
    box_plots({m: run.values("value", method=m, check="random_logit") for m in run.levels("method")}, ax=ax_logit,
              ylabel="SSIM true vs random logit")
    ax_logit.set_title("random logit", fontsize=9)
    ax_logit.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.savefig(run.path("sanity.png"), dpi=120, bbox_inches="tight")


def claims(run) -> list[dict]:
    out = [claim(f"{m}: sanity checks", "Sixt et al. Figs. 4-5", "not run", "not run", f"{m} is not available")
           for m in run.cfg["missing"]]
    if not run.rows:
        return out
    methods = run.levels("method")
    for group, above, paper in ((CONVERGING, True, "reaches |cos| 0.99 (Fig. 5: all modified BP methods except "
                                                    "LRP_z and DeepLIFT)"),
                                (NOT_CONVERGING, False, "does not converge (sec. 1: the gradient; Fig. 5: DeepLIFT)")):
        for m in (m for m in group if m in methods):
            rows = _lowest(run, m)
            ci = median_ci([float(r["value"]) for r in rows])
            where = f"layer {rows[0]['layer']} ({rows[0]['dim']} channels)" if rows else "no multi-channel layer"
            out.append(claim(f"{m}: {'converges' if above else 'does not converge'} to rank one (CSC)", paper,
                             f"median over images of the median |cos| at the lowest {where}: {ci}",
                             verdict(ci, "csc", above=above), "threshold: Sixt et al.'s |cos| 0.99", "sanity.png"))
    conv = [m for m in CONVERGING if m in methods]
    rest = [m for m in NOT_CONVERGING if m in methods]
    logit = {m: run.values("value", method=m, check="random_logit") for m in methods}
    diffs = {(c, r): paired_difference(logit[c], logit[r]) for c in conv for r in rest}
    if diffs:
        out.append(claim("converging methods ignore the explained logit more than the gradient and DeepLIFT",
                         "random-logit SSIM very close to 1 for converging methods, 0.4-0.8 for the rest (Fig. 4a)",
                         "median SSIM true vs random logit: " + ", ".join(f"{m} {median_ci(v)}" for m, v in logit.items())
                         + "; paired differences: " + ", ".join(f"{c} - {r} {d}" for (c, r), d in diffs.items()),
                         combine(verdict(d, "difference") for d in diffs.values()),
                         "most of a digit image is empty background, where all maps agree", "sanity.png"))
    return out
