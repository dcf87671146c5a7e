"""Figure 5 right: cost of beta-smoothing (one forward and one backward pass) against SmoothGrad
(one pass per noise sample, N = 10 to 50), timed side by side on the same batch."""
from __future__ import annotations

import time

import numpy as np

from experiments.common import available, claim, images, method_options, model
from experiments.stats import combine, paired_difference, verdict

TITLE = "computational cost: beta-smoothing vs SmoothGrad (Fig. 5 right)"


def config(quick: bool) -> dict:
    methods, missing = available(("gradient", "lrp"))
    if quick:
        return {"methods": methods[:1], "missing": missing, "batch": 2, "samples": [2, 4], "repeats": 1,
                "note": "quick."}
    return {"methods": methods, "missing": missing, "batch": 16, "samples": [10, 20, 30, 40, 50], "repeats": 5,
            "note": "16 digits test images on the VGG net, median of 5 interleaved repeats on a shared 2-core CPU."}


def tasks(cfg: dict) -> list[dict]:
    return [{"task": m, "method": m} for m in cfg["methods"]]


def _first_layer(net):
    return next(m for m in net.modules() if any(True for _ in m.parameters(recurse=False)))


def run_task(cfg: dict, task: dict, device, workdir) -> list[dict]:
    from geomexpl.explain import explain

    dev = str(device)
    net, x = model("vgg", "digits", dev), images("digits", "test", dev)[0][: cfg["batch"]]
    opts = method_options(task["method"], "vgg", "digits", dev)
    target = net(x).argmax(1)  # given, so the explanation's forward passes are all that is counted
    settings = [("beta_smoothing", 1, {"beta": 1.0})] + [
        (f"smoothgrad_{n}", n, {"smoothgrad": n, "noise_level": 0.2}) for n in cfg["samples"]]
    seen = [0]
    def count(module, inputs):  # whole-batch passes only (resolve_target probes one image for the class count)
        if inputs[0].shape[0] >= len(x):
            seen[0] += inputs[0].shape[0]

    hook = _first_layer(net).register_forward_pre_hook(count)
    times: dict[str, list[float]] = {name: [] for name, _, _ in settings}
    passes = {}
    try:
        for _ in range(cfg["repeats"]):
            for name, _, smooth in settings:
                seen[0] = 0
                start = time.perf_counter()
                explain(net, x, task["method"], target, **smooth, **opts)
                if x.device.type == "cuda":
                    import torch

                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                passes[name] = seen[0] / len(x)
    finally:
        hook.remove()
    return [{"method": task["method"], "setting": name, "samples": n, "repeat": r, "seconds": t,
             "forward_passes": passes[name]} for name, n, _ in settings for r, t in enumerate(times[name])]


def _settings(run, method: str) -> list[str]:
    return [k for k in run.levels("setting") if run.select(method=method, setting=k) and k != "beta_smoothing"]


def figures(run) -> None:
    from matplotlib.figure import Figure

    from geomexpl.plot import outside_legend

    fig = Figure(figsize=(5, 3.6), layout="constrained")
    ax = fig.subplots()
    for method in run.levels("method"):
        beta = np.median(run.values("seconds", method=method, setting="beta_smoothing"))
        n = [run.values("samples", method=method, setting=k)[0] for k in _settings(run, method)]
        t = [np.median(run.values("seconds", method=method, setting=k)) for k in _settings(run, method)]
        ax.plot(n, np.array(t) / beta, "o-", label=f"{method}: SmoothGrad / beta-smoothing")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xlabel("SmoothGrad samples N")
    ax.set_ylabel("median time relative to beta-smoothing")
    outside_legend(ax)
    fig.savefig(run.path("cost.png"), dpi=120, bbox_inches="tight")


def claims(run) -> list[dict]:
    """Exact forward-pass counts, and per interleaved repeat the paired time SmoothGrad - beta > 0."""
    out = []
    for method in run.levels("method"):
        beta = run.values("seconds", method=method, setting="beta_smoothing")
        p_beta = run.values("forward_passes", method=method, setting="beta_smoothing")[0]
        sg = {k: (run.values("samples", method=method, setting=k)[0], run.values("seconds", method=method, setting=k),
                  run.values("forward_passes", method=method, setting=k)[0]) for k in _settings(run, method)}
        slower = {k: paired_difference(t, beta) for k, (_, t, _) in sg.items()}
        counted = bool(p_beta)
        passes = ("agree" if p_beta == 1 and all(p == n for n, _, p in sg.values()) else "disagree") \
            if counted else "inconclusive"
        parts = {"pass counts": passes, "SmoothGrad slower": combine(verdict(d, "difference") for d in slower.values())}
        out.append(claim(
            f"{method}: beta-smoothing needs one forward and one backward pass, SmoothGrad one per sample",
            "beta-smoothing 1 pass, SmoothGrad N = 10 to 50 passes, 'considerably lower cost'",
            (f"forward passes per image: beta {p_beta:g}, SmoothGrad {', '.join(f'{p:g}' for _, _, p in sg.values())}; "
             if counted else "forward passes not countable (the LRP engine traces the layers itself, no module "
             "call to hook); ") + "median time ratio SmoothGrad/beta " +
            ", ".join(f"N={n:g}: {np.median(t) / np.median(beta):.1f}x" for n, t, _ in sg.values()) +
            f" (beta-smoothing {np.median(beta) * 1e3:.1f} ms per batch of {run.cfg['batch']}); paired time "
            f"differences SmoothGrad - beta (s): " + ", ".join(f"N={sg[k][0]:g}: {d}" for k, d in slower.items()),
            combine(parts.values()), "; ".join(f"{k}: {v}" for k, v in parts.items()) +
            "; timings on a shared CPU, interleaved repeats", "cost.png"))
    return out
