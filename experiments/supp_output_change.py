"""Supplement B (Fig. 6) and C: the network output barely changes under the manipulation; with the
reference's softmax output term and with Table 2's pre-activation (logit) term."""
from __future__ import annotations

from experiments.common import attack_tasks, available, box_figure, claim, run_attack_task
from experiments.stats import combine, describe, median_ci, rate_ci, verdict

TITLE = "change of the network output (supp. B, Fig. 6)"
run_task = run_attack_task


def config(quick: bool) -> dict:
    methods, missing = available(("gradient", "lrp"))
    if quick:
        return {"methods": methods[:1], "missing": missing, "n": 2, "batch": 2, "steps": 3, "lr_scale": 3.0,
                "note": "quick."}
    return {"methods": methods, "missing": missing, "n": 32, "batch": 32, "rate": "unit",
            "note": "digits VGG, N=32 pairs per method and output term, Table 1's preset (1500 Adam steps) at the "
                    "rate in [0, 1] units (x 0.226); the logits term with Table 2's output factor 10."}


def tasks(cfg: dict) -> list[dict]:
    return attack_tasks(cfg, cfg["methods"], variants=("plain", "logits"))


def _keyed(run) -> None:
    for r in run.rows:
        r["method_output"] = f"{r['method']}/{'softmax' if r['variant'] == 'plain' else 'logits'}"


def figures(run) -> None:
    _keyed(run)
    box_figure(run, [("softmax_change", "|g(x_adv) - g(x)| (softmax)"), ("logit_change", "|g~(x_adv) - g~(x)| (logits)"),
                     ("class_prob_change", "change of winning-class prob.")], run.path("output_change.png"),
               group_key="method_output")


def claims(run) -> list[dict]:
    _keyed(run)
    out = []
    for key in run.levels("method_output"):
        soft, kept = median_ci(run.values("softmax_change", method_output=key)), \
            rate_ci(run.values("class_kept", method_output=key))
        parts = {"class kept": verdict(kept, "class_kept"),
                 "softmax change small": verdict(soft, "softmax_change", above=False)}
        out.append(claim(f"{key} output term: class unchanged and |g(x_adv) - g(x)| small",
                         "all classes unchanged; median |g(x_adv) - g(x)| ~ 1e-3 (sec. 2.3, supp. Fig. 6)",
                         f"class kept {kept}; softmax change {describe(run.values('softmax_change', method_output=key))}; "
                         f"logit change {describe(run.values('logit_change', method_output=key))}",
                         combine(parts.values()), "; ".join(f"{k}: {v}" for k, v in parts.items()) +
                         "; the digits net is very confident: its softmax saturates, so the logits move more than "
                         "the softmax (docs/design.md)", "output_change.png"))
    return out
