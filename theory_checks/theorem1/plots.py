"""Figures of the Theorem 1 report: segment ratios against kappa_bar l, and the bracket on sup |kappa| per beta."""
from __future__ import annotations

import math
from pathlib import Path

MARKERS = {"attack": "o", "random": "s", "geodesic": "^", "tight": "D", "short": "v"}


def ratios(segments: list[dict], path: Path) -> Path:
    """Ratio |n(p_(i+1)) - n(p_i)| / (kappa_bar l) against kappa_bar l, per model and curve kind."""
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(r["label"] for r in segments))
    fig = Figure(figsize=(5.2 * len(labels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    for ax, label in zip(axes, labels):
        for kind, marker in MARKERS.items():
            sel = [r for r in segments if r["label"] == label and r["kind"] == kind and r["ratio"] > 0
                   and r["verdict"] != "EXEMPT"]
            if sel:
                ax.scatter([r["rhs"] for r in sel], [r["ratio"] for r in sel], marker=marker, s=10, alpha=0.6,
                           label=kind)
        exempt = [r for r in segments if r["label"] == label and r["verdict"] == "EXEMPT"]
        if exempt:
            ax.scatter([r["rhs"] for r in exempt], [r["ratio"] for r in exempt], marker="x", s=18, color="k",
                       label="EXEMPT (max-pool switch)")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.axvline(2.0, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="kappa_bar x l (right of 2: trivial)",
               ylabel="|n(p_(i+1)) - n(p_i)| / (kappa_bar l)", title=f"{label}: per-segment ratio (fail above 1)")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def bracket(rows: list[dict], path: Path) -> Path:
    """Lower end (ascent / samples) and upper ends (beta C~ / c) of sup |kappa| against beta, log scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.8, 4.2), layout="constrained")
    ax = fig.subplots()
    for label in dict.fromkeys(r["label"] for r in rows):
        sel = sorted((r for r in rows if r["label"] == label), key=lambda r: r["beta"])
        betas = [r["beta"] for r in sel]
        line = ax.plot(betas, [r["lower"] for r in sel], "o-", label=f"{label}: lower (found)")[0]
        for key, style in (("upper_spectral", "s--"), ("upper_frobenius", "^:")):
            values = [r.get(key) for r in sel]
            if all(v is not None and not math.isnan(v) for v in values):
                ax.plot(betas, values, style, color=line.get_color(), label=f"{label}: {key.replace('_', ' ')}")
    ax.set(xscale="log", yscale="log", xlabel="beta", ylabel="sup |kappa_max| near the data",
           title="Bracket on sup |kappa|")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path
