"""Defences by training (issue 17): curvature, manipulability and accuracy of fine-tuned digits VGGs.

Dombrowski et al. 2022 bound the manipulability of gradient explanations by the curvature of the
level sets and derive defences from the bound. The zoo's digits VGG is fine-tuned
(``geomexpl.robust.robust_pretrained``; weights kept in the run folder under ``weights/``) with no
regulariser ('plain') and with each defence at three strengths and three seeds. Per model:

* test accuracy and training time;
* |kappa_max| of its softplus twin at beta = 10 (a softplus-trained model: of itself, at its own
  beta) at the first test images of the run's pairs, torch Lanczos, tolerance 1e-4; the Theorem 1
  bracket ends at those points: the largest |kappa_max| and beta C~ / c, c the smallest |grad g|;
* the MoRF pixel-flipping area of its gradient maps (as in fig7_pixel_flipping);
* the map PCC the 'gradient' attack reaches with Table 1's preset and under L-inf 8/255.

A softplus-trained model is smooth already: it is attacked as it is, without beta growth
(``beta_growth=None``: the attack differentiates the given twin).
The beta = 0.8 smoothed gradient of each plain model (Table 5) is the explanation-side reference.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from experiments.common import attack_batch, batches, claim, images, top_curvature
from experiments.stats import paired_difference, spearman_ci, verdict

TITLE = "defences by training: curvature, manipulability and accuracy of fine-tuned digits VGGs (issue 17)"
EXTENDS = ("n", "note", "seeds")
ATTACKS = ("preset", "linf")
REFERENCE = ("smooth", "smooth_linf")  # the beta-smoothed gradient of the plain models, by attack of ATTACKS
ATTACK_METRICS = ("map_pcc", "map_pcc_before", "image_ssim", "linf", "class_kept")
SUMMARY = ("test_accuracy", "train_seconds", "kappa_max", "morf_area", "bracket_lower", "bracket_upper_spectral",
           "bracket_upper_frobenius")
FIGURE = "robust_sweep.png"
PAPER = {"weight_decay": "Dombrowski et al. 2022: weight decay lowers the weight norms of the curvature bound",
         "softplus": "Dombrowski et al. 2022: softplus (smaller beta) lowers the curvature bound beta C~ / c",
         "hessian": "Dombrowski et al. 2022: the Hessian penalty lowers the curvature",
         "alignment": "not in Dombrowski et al. 2022; Joo et al. 2023 train gradient alignment against manipulation"}


def config(quick: bool) -> dict:
    base = {"arch": "vgg", "dataset": "digits", "method": "gradient", "beta": 10.0, "linf": 8 / 255, "rate": "unit"}
    if quick:
        return {**base, "defences": {"softplus": [3.0]}, "seeds": [0], "epochs": 1, "n": 2, "batch": 2, "steps": 3,
                "kappa_images": 2, "flip_images": 8, "flip_steps": 5, "note": "quick: plain and softplus beta=3, "
                "1 epoch, 2 pairs, 3 steps."}
    return {**base, "defences": {"weight_decay": [1e-4, 1e-3, 3e-3], "softplus": [10.0, 3.0, 1.0],
                                 "hessian": [1e-8, 1e-7, 1e-6], "alignment": [1e-3, 1e-2, 3e-2]},
            "seeds": [0, 1, 2], "epochs": 5, "n": 32, "batch": 32, "kappa_images": 16, "flip_images": 64,
            "flip_steps": 21,
            "note": "the bundled digits VGG fine-tuned 5 epochs (Adam 5e-4, seeds 0-2) plain and with weight decay "
                    "1e-4/1e-3/3e-3, softplus beta 10/3/1, the Hessian penalty 1e-8/1e-7/1e-6 (finite differences, "
                    "h 1e-2, 4 probes) and gradient alignment 1e-3/1e-2/3e-2 (radius 0.05, l2 + cosine), "
                    "strengths set from the penalties' scales at the start; |kappa_max| at 16 images, MoRF area "
                    "at 64; the gradient attack with Table 1's preset (1500 "
                    "steps, beta growth 10 -> 100; softplus models at their own beta) at the rate in [0, 1] units, "
                    "as it is and under L-inf 8/255, N=32 pairs per model; the beta=0.8 smoothed gradient of the "
                    "plain models (Table 5, 500 steps) as reference."}


def models(cfg: dict) -> list[tuple[str, float]]:
    """(defence, strength) of every model: the plain one first."""
    return [("plain", 0)] + [(d, s) for d, strengths in cfg["defences"].items() for s in strengths]


def axis(defence: str, strength: float) -> float:
    """How strong a defence is: its strength, 1/beta for softplus (the plain ReLU model: 0)."""
    return 1 / strength if defence == "softplus" else strength


def setting(defence: str, strength: float) -> str:
    return f"beta={strength:g}" if defence == "softplus" else f"{strength:g}"


def tasks(cfg: dict) -> list[dict]:
    """Per seed and model: the model task (which fine-tunes it if needed), then its attack batches."""
    out = []
    for seed in cfg["seeds"]:
        for defence, strength in models(cfg):
            key, name = {"defence": defence, "strength": strength, "seed": seed}, f"{defence}/{strength:g}/seed{seed}"
            out.append({"task": f"{name}/model", "kind": "model", **key})
            out += [{"task": f"{name}/{attack}/{a}-{b}", "kind": attack, **key, "start": a, "stop": b}
                    for attack in ATTACKS + (REFERENCE if defence == "plain" else ())
                    for a, b in batches(cfg["n"], cfg["batch"])]
    return out


@functools.lru_cache(maxsize=None)
def defended(workdir: str, arch: str, dataset: str, defence: str, strength: float, seed: int, epochs: int,
             device: str) -> tuple[torch.nn.Module, dict]:
    """The fine-tuned model and its metadata, from the run folder's ``weights/`` or fine-tuned and saved there."""
    from geomexpl.robust import robust_pretrained

    net, meta = robust_pretrained(arch, dataset, defence, strength, seed, epochs, directory=Path(workdir) / "weights",
                                  progress=False, device=device)
    return net.to(device), meta


def attack_options(cfg: dict, attack: str, net: torch.nn.Module) -> dict:
    from geomexpl.attack import SMOOTHING_BETA
    from geomexpl.nets import unwrap

    opts = {"linf": cfg["linf"]} if attack.endswith("linf") else {}
    if attack.startswith("smooth"):
        opts["smooth_beta"] = SMOOTHING_BETA
    beta = unwrap(net)[1]
    if beta is not None:  # smooth already: the model itself, no growth (see the module docstring)
        opts["beta_growth"] = None
    return opts


def run_task(cfg: dict, task: dict, device, workdir: Path) -> list[dict]:
    dev = str(device)
    net, meta = defended(str(workdir), cfg["arch"], cfg["dataset"], task["defence"], task["strength"], task["seed"],
                         cfg["epochs"], dev)
    key = {k: task[k] for k in ("defence", "strength", "seed")}
    if task["kind"] == "model":  # rows of one shape for every task: no attack, steps or rate here
        rows = [{"example": "", "metric": m, "value": meta[m]} for m in ("test_accuracy", "train_seconds")]
        rows += _geometry_rows(cfg, net, dev) + _flip_rows(cfg, net, dev)
        return [{**key, "attack": "", **r, "steps": "", "lr": ""} for r in rows]
    _, rows = attack_batch(cfg, cfg["method"], task["start"], task["stop"], device, arch=cfg["arch"],
                           dataset=cfg["dataset"], net=net, **attack_options(cfg, task["kind"], net))
    return [{**key, "attack": task["kind"], "example": r["example"], "metric": m, "value": r[m], "steps": r["steps"],
             "lr": r["lr"]} for r in rows for m in ATTACK_METRICS]


def _geometry_rows(cfg: dict, net, device: str) -> list[dict]:
    """|kappa_max| per image of the smooth model (twin at cfg['beta'], or the softplus model) and the bracket ends."""
    from geomexpl.nets import unwrap
    from theory_checks.theorem1.bracket import bound_columns, theorem_constant

    relu, trained = unwrap(net)
    beta = trained or cfg["beta"]  # a twin of a twin takes the new beta: the softplus model keeps its own
    kappa, info = top_curvature(cfg, net, beta, device, cfg["dataset"])
    constants = theorem_constant(relu, tuple(images(cfg["dataset"], "test", device)[0].shape[1:]))
    ends = bound_columns(float(kappa.max()), beta, float(info.grad_norm.min()), constants)
    return [{"example": i, "metric": "kappa_max", "value": k} for i, k in enumerate(kappa.tolist())] + [
        {"example": "", "metric": m, "value": v} for m, v in (
            ("bracket_lower", float(kappa.max())), ("bracket_upper_spectral", ends["bound_spectral"]),
            ("bracket_upper_frobenius", ends["bound_frobenius"]))]


def _flip_rows(cfg: dict, net, device: str) -> list[dict]:
    """Per test image, the area under its MoRF correctness curve for the model's gradient map (fig7's measure)."""
    from geomexpl.explain import explain, relevance_map
    from geomexpl.metrics import pixel_flipping

    x, labels = (t[: cfg["flip_images"]] for t in images(cfg["dataset"], "test", device))
    maps = relevance_map(explain(net, x, cfg["method"], labels))
    fractions, correct = pixel_flipping(net, x, labels, maps, steps=cfg["flip_steps"], per_example=True)
    area = np.trapezoid(correct.cpu().numpy(), fractions.cpu().numpy(), axis=1)
    return [{"example": i, "metric": "morf_area", "value": float(a)} for i, a in enumerate(area.tolist())]


def per_model(run) -> list[dict]:
    """One row per model with rows: its medians (the mean MoRF area) and median map PCC per attack."""
    out = []
    for seed in run.cfg["seeds"]:
        for defence, strength in models(run.cfg):
            where = {"defence": defence, "strength": strength, "seed": seed}
            if not run.select(**where):
                continue
            row = {**where, "axis": axis(defence, strength)}
            for metric in SUMMARY:
                v = run.values("value", **where, attack="", metric=metric)
                row[metric] = float((np.mean if metric == "morf_area" else np.median)(v)) if v.size else np.nan
            for attack in ATTACKS + REFERENCE:
                v = run.values("value", **where, attack=attack, metric="map_pcc")
                row[f"map_pcc_{attack}"] = float(np.median(v)) if v.size else np.nan
            out.append(row)
    return out


def pcc_difference(run, defence: str, strength: float, attack: str):
    """Median of the paired differences map PCC(defence) - map PCC(plain), paired by (seed, pair)."""
    def by_pair(d, s):
        return {(r["seed"], r["example"]): float(r["value"])
                for r in run.select(defence=d, strength=s, attack=attack, metric="map_pcc")}

    mine, plain = by_pair(defence, strength), by_pair("plain", 0)
    keys = sorted(mine.keys() & plain.keys())
    return paired_difference([mine[k] for k in keys], [plain[k] for k in keys])


def figures(run) -> None:
    from geomexpl import runs
    from matplotlib.figure import Figure

    table = per_model(run)
    runs.write_csv(run.path("summary.csv"), table)
    colours = {d: f"C{i}" for i, d in enumerate(["plain", *run.cfg["defences"]])}
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, attack, label in zip(axes, ATTACKS, ("Table 1 preset", f"L-inf {run.cfg['linf'] * 255:.0f}/255")):
        for d, colour in colours.items():
            points = [(r[f"map_pcc_{attack}"], r["test_accuracy"]) for r in table if r["defence"] == d]
            if points:
                ax.scatter(*zip(*points), color=colour, marker="*" if d == "plain" else "o", label=d)
        reference = [r[f"map_pcc_{REFERENCE[ATTACKS.index(attack)]}"] for r in table if r["defence"] == "plain"]
        if np.isfinite(reference).any():
            ax.axvline(np.nanmedian(reference), color="grey", ls="--", lw=0.8, label="plain, beta=0.8 smoothed")
        ax.set_xlabel(f"median PCC(h_adv, h_t), {label}")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
    ax = axes[2]
    for d in run.cfg["defences"]:
        points = sorted((r["axis"], r["kappa_max"]) for r in table if r["defence"] == d)
        if points:
            ax.scatter(*zip(*points), color=colours[d], s=12)
            steps = sorted({p[0] for p in points})
            ax.plot(steps, [np.median([k for a, k in points if a == s]) for s in steps], color=colours[d], label=d)
    plain = [r["kappa_max"] for r in table if r["defence"] == "plain"]
    if plain:
        ax.axhline(np.median(plain), color=colours["plain"], ls="--", label="plain")
    ax.set(xscale="log", yscale="log", xlabel="strength (softplus: 1/beta)", ylabel="median |kappa_max|",
           title=f"twin at beta={run.cfg['beta']:g} (softplus models: their own beta)")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    fig.suptitle("fine-tuned digits VGGs, one point per model (defence, strength, seed)", fontsize=9)
    fig.savefig(run.path(FIGURE), dpi=120, bbox_inches="tight")


def claims(run) -> list[dict]:
    """Per defence: (a) Spearman rho of strength against the per-model median |kappa_max|, the plain models at
    strength 0, below 0; (b) at the strongest setting, the paired median map PCC difference to the plain model
    at L-inf 8/255 below 0, with the accuracy cost and the other settings reported beside it."""
    out, table, budget = [], per_model(run), f"L-inf {run.cfg['linf'] * 255:.0f}/255"

    def medians(d, column, fmt=".3g"):  # the median over seeds of a per-model column, by setting
        settings = [(0, "plain")] if d == "plain" else [(s, setting(d, s)) for s in run.cfg["defences"][d]]
        values = [(name, [r[column] for r in table if r["defence"] == d and r["strength"] == s])
                  for s, name in settings]
        return "; ".join(f"{name} {np.median(v):{fmt}}" for name, v in values if v) or f"{d} not run"

    for d, strengths in run.cfg["defences"].items():
        paper = PAPER.get(d, "not in Dombrowski et al. 2022")
        points = [r for r in table if r["defence"] in ("plain", d)]
        rho = spearman_ci([r["axis"] for r in points], [r["kappa_max"] for r in points])
        out.append(claim(f"{d}: the curvature of the level sets falls as the defence grows stronger", paper,
                         f"Spearman rho of {'1/beta' if d == 'softplus' else 'strength'} against the per-model median "
                         f"|kappa_max| (plain models at 0), {rho}; median over seeds: {medians('plain', 'kappa_max')}; "
                         f"{medians(d, 'kappa_max')}", verdict(rho, "spearman", above=False),
                         f"{len(points)} models ({len(run.cfg['seeds'])} seeds x {len(strengths) + 1} settings "
                         "planned)", FIGURE))
        strongest = max(strengths, key=lambda s: axis(d, s))
        linf = {s: pcc_difference(run, d, s, "linf") for s in strengths}
        others = "; ".join(f"{setting(d, s)}: {verdict(v, 'difference', above=False)}" for s, v in linf.items()
                           if s != strongest)
        out.append(claim(
            f"{d}: at its strongest setting ({setting(d, strongest)}) the map is harder to manipulate than on the "
            f"plain model ({budget})", paper,
            f"paired median difference of map PCC (defence - plain) {linf[strongest]}, at Table 1's preset "
            f"{pcc_difference(run, d, strongest, 'preset')}; median map PCC at {budget}: "
            f"{medians('plain', 'map_pcc_linf')}; {medians(d, 'map_pcc_linf')}; beta=0.8 smoothed "
            f"{medians('plain', 'map_pcc_smooth_linf')}; test accuracy: {medians('plain', 'test_accuracy', '.4f')}; "
            f"{medians(d, 'test_accuracy', '.4f')}; mean MoRF area (lower is better): {medians('plain', 'morf_area')}; "
            f"{medians(d, 'morf_area')}", verdict(linf[strongest], "difference", above=False),
            "paired over (seed, pair); the accuracy cost is reported, not judged"
            + (f"; other settings: {others}" if others else ""), FIGURE))
    return out
