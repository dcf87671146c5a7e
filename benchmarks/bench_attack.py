"""Attack cost on the digits VGG-style model (issue 4's goals).

The cost of one step is measured as (t(1 + S steps) - t(1 step)) / S, which removes the fixed cost
of an attack call (validation, the final evaluation on the ReLU model).
- per-image step time at batch 64 against batch 1 (goal: batch 64 >= 3x cheaper per image);
- one attack step against one input gradient of the same batch for 'gradient' (goal: <= 3x).
"""
from __future__ import annotations

from benchmarks.harness import side_by_side
from geomexpl import data, nets
from geomexpl.attack import explanation_target, manipulate
from geomexpl.explain import explain


def run(report, quick: bool) -> None:
    model = nets.pretrained("vgg", "digits", progress=False)
    images, _ = data.load("digits", "test")
    x, target = images[:64], explanation_target(model, images[64:128], "gradient")
    extra = 3 if quick else 8
    repeats = 2 if quick else 3

    def attack(n, steps):
        return lambda: manipulate(model, x[:n], target[:n], "gradient", steps=steps, target=0)

    t = side_by_side({"b64_short": attack(64, 1), "b64_long": attack(64, 1 + extra),
                      "b1_short": attack(1, 1), "b1_long": attack(1, 1 + extra),
                      "gradient": lambda: explain(model, x, "gradient", target=0)}, repeats=repeats)
    step64 = (t["b64_long"] - t["b64_short"]) / extra
    step1 = (t["b1_long"] - t["b1_short"]) / extra
    ratio = step1 / (step64 / 64)
    report.add("attack", "per-image step time, batch 1 / batch 64", ratio, "x", ">= 3", ratio >= 3)
    report.add("attack", "step time per image at batch 64", step64 / 64 * 1e3, "ms")
    ratio = step64 / t["gradient"]
    report.add("attack", "attack step / input gradient (batch 64, 'gradient')", ratio, "x", "<= 3", ratio <= 3)
