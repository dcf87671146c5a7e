"""Explanation cost on the digits VGG-16-style model, batch of 64 digits-32 images.

- ours / Captum, timed side by side, for the methods Captum has: gradient (Saliency), gradient x
  input, integrated gradients (30 steps, midpoint), Guided Backprop, Deconvnet and DeepLIFT-Rescale.
  Goal: not slower (ratio <= 1). (Captum's LRP cannot run this model: it has no rule for
  nn.Flatten, and with an identity rule its hooks fail on the flatten's size change.)
- the double-backprop path Captum cannot do (it computes its gradients without create_graph, so its
  Saliency / Guided BP results carry no graph and IG / DeepLIFT only that of the (x - x0) factor):
  one attack-loss gradient d/dx |map(h(x)) - T|^2 on the softplus twin (beta 30), per image, and
  relative to computing h alone (not for Deconvnet, whose h does not depend on x).
- per-image time at batch 64 against batch 1, for every method.
"""
from __future__ import annotations

import torch

from benchmarks.harness import side_by_side
from geomexpl import data, nets
from geomexpl.explain import METHODS, explain, fit_patterns, relevance_map

CAPTUM_NAMES = {"gradient": "Saliency", "grad_x_input": "InputXGradient",
                "integrated_gradients": "IntegratedGradients", "guided_backprop": "GuidedBackprop",
                "deconvnet": "Deconvolution", "deeplift": "DeepLift"}


def _captum_call(attr, method: str, model, x, target):
    algorithm = getattr(attr, CAPTUM_NAMES[method])(model)
    kwargs = {"target": target}
    if method == "gradient":
        kwargs["abs"] = False
    if method == "integrated_gradients":
        kwargs.update(n_steps=30, method="riemann_middle")

    def call():
        return algorithm.attribute(x.clone().requires_grad_(True), **kwargs)
    return call


def run(report, quick: bool, device: str = "cpu") -> None:
    try:
        from captum import attr
    except ImportError:  # the comparison rows need the optional oracle dependency
        attr = None
    model = nets.pretrained("vgg", "digits", progress=False).to(device)
    images = data.load("digits", "test")[0].to(device)
    train = data.load("digits", "train")[0].to(device)
    x = images[:64]
    target = model(x).argmax(1)
    repeats = 2 if quick else 5
    patterns = fit_patterns(model, train)
    options = {m: {"patterns": patterns} if m.startswith("pattern") else {} for m in METHODS}
    methods = ["gradient", "guided_backprop", "lrp", "deeplift"] if quick else sorted(METHODS)

    if attr is not None:
        for method in (m for m in CAPTUM_NAMES if m in methods or not quick):
            t = side_by_side({"ours": lambda m=method: explain(model, x, m, target),
                              "captum": _captum_call(attr, method, model, x, target)},
                             repeats=repeats, device=device)
            ratio = t["ours"] / t["captum"]
            report.add("explain", f"{method}: ours / captum time, batch 64", ratio, "x", "<= 1", ratio <= 1)

    twin = nets.softplus_twin(model, 30.0)
    goal_map = relevance_map(explain(model, images[64:128], "gradient"))
    for method in methods:
        def attack_loss(m=method):
            xg = x.clone().requires_grad_(True)
            return (relevance_map(explain(twin, xg, m, target, **options[m])) - goal_map).pow(2).sum(), xg

        cases = {"b64": lambda m=method: explain(model, x, m, target, **options[m]),
                 "b1": lambda m=method: explain(model, x[:1], m, target[:1], **options[m])}
        if attack_loss()[0].requires_grad:  # Deconvnet's h does not depend on x: nothing to differentiate
            cases["double"] = lambda m=method: torch.autograd.grad(*attack_loss(m))
        t = side_by_side(cases, repeats=repeats, device=device)
        per_image = t["b1"] / (t["b64"] / 64)
        report.add("explain", f"{method}: per-image time, batch 1 / batch 64", per_image, "x", ">= 3",
                   per_image >= 3)
        report.add("explain", f"{method}: time per image at batch 64", t["b64"] / 64 * 1e3, "ms")
        if "double" in t:
            report.add("explain", f"{method}: double backprop (attack-loss gradient) per image, batch 64",
                       t["double"] / 64 * 1e3, "ms")
            report.add("explain", f"{method}: double backprop / explanation alone", t["double"] / t["b64"], "x")
