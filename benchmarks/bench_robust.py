"""Cost of the training-time defences of ``geomexpl.robust`` on the zoo's digits VGG, batch 64.

- one fine-tuning step (``robust.train_step``: forward, backward, Adam) with each regulariser
  relative to a plain step, all timed side by side: weight decay, the softplus twin (beta 10), the
  Hessian penalty by finite differences (4 Rademacher probes; on the ReLU net and on the twin), the
  Hessian penalty by exact double-backward HVPs (on the twin: a ReLU net's exact Hessian is 0), and
  local gradient alignment;
- the Hessian penalty alone with its parameter gradient, exact HVPs against finite differences on the
  same twin and probes (quick mode: fewer repeats, and probes 4 only).
"""
from __future__ import annotations

import copy

import torch

from benchmarks.harness import side_by_side
from geomexpl import data, nets
from geomexpl.robust import penalty_function, train_step

BENCH = "robust"
BETA, BATCH = 10.0, 64


def _stepper(base, defence: str, strength: float, beta: float | None = None, **options):
    """A closure doing one train_step on its own copy of the model and optimiser."""
    net = copy.deepcopy(base).requires_grad_(True)
    net = nets.softplus_twin(net, beta) if beta else net
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=strength if defence == "weight_decay" else 0.0)
    penalty = penalty_function(net, defence, bounds=((0.0,), (1.0,)), generator=torch.Generator().manual_seed(0),
                               **options)
    return lambda xb, yb: train_step(net, opt, xb, yb, penalty, strength)


def _penalty_and_gradient(twin, method: str, probes: int):
    penalty = penalty_function(twin, "hessian", probes=probes, hessian_method=method,
                               generator=torch.Generator().manual_seed(0))
    params = [p for p in twin.parameters()]

    def run(xb, yb):
        value = penalty(xb, yb).mean()
        return torch.autograd.grad(value, params, allow_unused=True)
    return run


def run(report, quick: bool, device: str = "cpu") -> None:
    base = nets.pretrained("vgg", "digits", progress=False).to(device)
    x, y = (t.to(device) for t in data.load("digits", "train"))
    xb, yb = x[:BATCH], y[:BATCH]
    repeats = 3 if quick else 7
    steps = {
        "plain": _stepper(base, "plain", 0.0),
        "weight_decay": _stepper(base, "weight_decay", 1e-4),
        f"softplus (beta {BETA:g})": _stepper(base, "softplus", BETA, beta=BETA),
        "hessian fd, 4 probes": _stepper(base, "hessian", 0.01, probes=4, hessian_method="fd"),
        f"hessian fd, 4 probes, twin beta {BETA:g}": _stepper(base, "hessian", 0.01, beta=BETA, probes=4,
                                                              hessian_method="fd"),
        f"hessian exact, 4 probes, twin beta {BETA:g}": _stepper(base, "hessian", 0.01, beta=BETA, probes=4,
                                                                 hessian_method="exact"),
        "alignment (l2 + cosine)": _stepper(base, "alignment", 0.1, radius=0.05, kind="both"),
    }
    t = side_by_side({name: (lambda f=f: f(xb, yb)) for name, f in steps.items()}, repeats=repeats, device=device)
    report.add(BENCH, f"plain fine-tuning step, batch {BATCH}", t["plain"] * 1e3, "ms")
    for name, seconds in t.items():
        if name != "plain":
            report.add(BENCH, f"{name}: step / plain step", seconds / t["plain"], "x")

    twin = nets.softplus_twin(copy.deepcopy(base).requires_grad_(True), BETA).eval()
    for probes in (4,) if quick else (1, 4, 16):
        t = side_by_side({method: (lambda f=_penalty_and_gradient(twin, method, probes): f(xb, yb))
                          for method in ("exact", "fd")}, repeats=repeats, device=device)
        report.add(BENCH, f"hessian penalty + parameter gradient, {probes} probes: exact / fd time",
                   t["exact"] / t["fd"], "x")
        report.add(BENCH, f"hessian penalty + parameter gradient, {probes} probes, fd", t["fd"] * 1e3, "ms")
