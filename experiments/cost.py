"""Figure 5 right: cost of beta-smoothing (one forward and one backward pass) against SmoothGrad
(one pass per noise sample, N = 10 to 50), timed side by side on the same batch."""
from __future__ import annotations

import time

import numpy as np

from experiments.common import available, claim, images, method_options, model

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
    return [{"method": task["method"], "setting": name, "samples": n, "seconds": float(np.median(times[name])),
             "forward_passes": passes[name]} for name, n, _ in settings]


def finish(run) -> list[dict]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6), layout="constrained")
    ax = fig.subplots()
    claims = []
    for method in run.levels("method"):
        beta = run.values("seconds", method=method, setting="beta_smoothing")[0]
        sg = [r for r in run.select(method=method) if r["setting"] != "beta_smoothing"]
        n = np.array([float(r["samples"]) for r in sg])
        t = np.array([float(r["seconds"]) for r in sg])
        ax.plot(n, t / beta, "o-", label=f"{method}: SmoothGrad / beta-smoothing")
        p_beta = run.values("forward_passes", method=method, setting="beta_smoothing")[0]
        p_sg = np.array([float(r["forward_passes"]) for r in sg])
        claims.append(claim(
            f"{method}: beta-smoothing needs one forward and one backward pass, SmoothGrad one per sample",
            "beta-smoothing 1 pass, SmoothGrad N = 10 to 50 passes, 'considerably lower cost'",
            (f"forward passes per image: beta {p_beta:g}, SmoothGrad {', '.join(f'{p:g}' for p in p_sg)}; "
             if p_beta else "forward passes not countable (the LRP engine traces the layers itself, no module "
             "call to hook); ") +
            f"time ratio SmoothGrad/beta {', '.join(f'N={k:g}: {v:.1f}x' for k, v in zip(n, t / beta))} "
            f"(beta-smoothing {beta * 1e3:.1f} ms per batch of {run.cfg['batch']})",
            "agree" if p_beta in (0, 1) and (t > beta).all() else "partly",
            "timings on a shared CPU; ratios measured side by side", "cost.png"))
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xlabel("SmoothGrad samples N")
    ax.set_ylabel("time relative to beta-smoothing")
    ax.legend(fontsize=7)
    fig.savefig(run.path("cost.png"), dpi=110)
    return claims
