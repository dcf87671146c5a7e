"""Plots of the Theorem 2 check: both sides of eq. (21) along a line, the d > 1 deviation, SmoothGrad's densities."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import stats

from theory_checks.theorem2 import MATCHED_SIGMA, PAPER_SIGMA, closed_form_gradient, exact_gradient, gaussian_limit_gap, logistic_density, mc_gradient


def curve_rows(n: int, generator: torch.Generator) -> list[dict]:
    """MC and both sides of eq. (21) along x: d = 1 (w = 1.5) for beta in {0.5, 1, 4}; d = 100 equal weights."""
    rows = []
    for label, w, beta in [("d1_beta0.5", torch.tensor([1.5]), 0.5), ("d1_beta1", torch.tensor([1.5]), 1.0),
                           ("d1_beta4", torch.tensor([1.5]), 4.0), ("d100_equal_beta1", torch.ones(100) / 10, 1.0)]:
        w = w.double()
        z = torch.linspace(-6.0, 6.0, 49, dtype=torch.float64)
        x = z[:, None] * w / w.norm() / beta
        mean, se = mc_gradient(x, w, beta, n, generator)
        closed, exact = closed_form_gradient(x, w, beta), exact_gradient(x, w, beta)
        for i in range(len(z)):
            rows.append(dict(curve=label, d=w.numel(), beta=beta, beta_t=z[i].item(), x_along_u=z[i].item() / beta,
                             mc_over_w=(mean[i, 0] / w[0]).item(), se_over_w=(se[i, 0] / w[0]).item(),
                             closed_over_w=(closed[i, 0] / w[0]).item(), exact_over_w=(exact[i, 0] / w[0]).item()))
    return rows


def _figure(width: float = 11.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.2), layout="constrained")
    return fig, fig.subplots(1, 2)


def plot_curves(rows: list[dict], path: Path) -> Path:
    fig, (left, right) = _figure()
    for label in dict.fromkeys(row["curve"] for row in rows):
        sel = [row for row in rows if row["curve"] == label]
        col = lambda key: np.array([row[key] for row in sel])
        d, beta = sel[0]["d"], sel[0]["beta"]
        if d == 1:
            line = left.plot(col("x_along_u"), col("closed_over_w"), label=f"sigmoid(beta x), beta = {beta:g}")[0]
            left.errorbar(col("x_along_u"), col("mc_over_w"), yerr=3 * col("se_over_w"), fmt="o", ms=3,
                          color=line.get_color())
        if beta == 1.0:
            bars = right.errorbar(col("beta_t"), col("mc_over_w") - col("closed_over_w"), yerr=col("se_over_w"),
                                  fmt="o", ms=3, label=f"MC - closed form (+-1 SE), d = {d}")
            right.plot(col("beta_t"), col("exact_over_w") - col("closed_over_w"), color=bars[0].get_color(),
                       label=f"exact - closed form, d = {d}")
    left.set(xlabel="x (d = 1, w = 1.5)", ylabel="E[g'(x - eps)] / w",
             title="MC (dots, +-3 SE) vs grad softplus_{beta/|w|} (lines)")
    right.axhline(0.0, color="k", lw=0.5)
    right.set(xlabel="beta u.x", ylabel="(E[grad g]_i - closed form_i) / w_i",
              title="Residuals at beta = 1: d = 1 and d = 100 equal weights")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_deviation(rows: list[dict], mc_rows: list[dict], path: Path) -> Path:
    fig, (left, right) = _figure()
    limit = gaussian_limit_gap()[0]
    equal = [r for r in rows if r["kind"] == "equal"]
    rand = [r for r in rows if r["kind"] == "random"]
    left.plot([r["d"] for r in equal], [r["sup_abs_gap"] for r in equal], label="exact, equal weights")
    left.scatter([r["d"] for r in rand], [r["sup_abs_gap"] for r in rand], s=8, alpha=0.5, label="exact, random w")
    left.errorbar([r["d"] for r in mc_rows], [abs(r["mc_over_w"] - r["closed_over_w"]) for r in mc_rows],
                  yerr=[3 * r["se_over_w"] for r in mc_rows], fmt="s", color="k", label="MC (+-3 SE), equal weights")
    left.axhline(limit, ls="--", color="gray", label="Gaussian limit")
    left.set(xscale="log", xlabel="d", ylabel="sup_x |E[grad g]_i - closed form_i| / |w_i|",
             title="Error of eq. (21) for d > 1")
    right.scatter([1 - r["kappa"] for r in rows], [r["sup_abs_gap"] for r in rows], s=8, alpha=0.5)
    right.plot([0, 1], [0, limit], ls="--", color="gray", label="Gaussian limit x (1 - kappa)")
    right.set(xlabel="1 - kappa,  kappa = sum (w_i/|w|)^4", ylabel="sup |D|", title="Error vs spread of w")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_densities(path: Path) -> Path:
    fig, (left, right) = _figure()
    e = np.linspace(-8.0, 8.0, 801)
    left.plot(e, logistic_density(e, 1.0), label="p_beta (logistic), beta = 1")
    for name, sigma in [("paper", PAPER_SIGMA), ("variance-matched", MATCHED_SIGMA)]:
        left.plot(e, stats.norm.pdf(e, scale=sigma), ls="--", label=f"N(0, sigma^2), {name} sigma = {sigma:.3f}")
        right.plot(e, 1.0 / (1.0 + np.exp(-e)) - stats.norm.cdf(e / sigma), label=f"{name} sigma")
    left.set(xlabel="eps", ylabel="density", title="Noise densities")
    right.axhline(0.0, color="k", lw=0.5)
    right.set(xlabel="beta x", ylabel="sigmoid(beta x) - Phi(x / sigma)", title="Difference of smoothed gradients")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path
