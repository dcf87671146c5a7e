"""Figure 2: one image manipulated towards another image's map, for every explanation method."""
from __future__ import annotations

import torch

from experiments.common import (PAPER_METHODS, attack_tasks, available, claim, manipulation_claim, run_attack_task,
                                tensor_path)

TITLE = "qualitative manipulation for each method (Fig. 2 layout)"
run_task = run_attack_task
SKIPPED = ("integrated_gradients",)


def config(quick: bool) -> dict:
    methods, missing = available(PAPER_METHODS)
    base = {"n": 1, "batch": 1, "rate": "unit", "save_tensors": True, "missing": missing}
    if quick:
        return {**base, "methods": methods[:2], "steps": 3, "note": "quick: 1 pair, 3 steps."}
    return {**base, "methods": methods, "skipped": [],
            "note": "one digits test pair (seeded), every paper method, Table 1's preset (1500 Adam steps, integrated "
                    "gradients 500) at the rate in [0, 1] units (x 0.226); a qualitative figure: fig3_similarity "
                    "has the numbers."}


def tasks(cfg: dict) -> list[dict]:
    return attack_tasks(cfg, cfg["methods"])


def figures(run) -> None:
    """The Fig. 2 grid: one row per method, labelled with the class and the map PCC before -> after."""
    from geomexpl.plot import manipulation_figure

    done = [t for t in tasks(run.cfg) if tensor_path(run.out, t).is_file()]
    if not done:
        return
    parts = [torch.load(tensor_path(run.out, t), weights_only=True) for t in done]
    cat = {k: torch.cat([p[k] for p in parts]) for k in ("x", "map_x", "target_map", "x_adv", "map_adv")}
    labels = []
    for t in done:
        row = run.select(task=t["task"])[0]
        kept = "kept" if float(row["class_kept"]) == 1 else "CHANGED"
        labels.append(f"{t['method']}\nclass {row['target_class']} {kept}, {int(float(row['steps']))} steps\n"
                      f"map PCC {float(row['map_pcc_before']):.2f} -> {float(row['map_pcc']):.2f}")
    manipulation_figure(cat["x"], cat["map_x"], cat["target_map"], cat["x_adv"], cat["map_adv"],
                        run.path("manipulation.png"), row_labels=labels,
                        title="one digits test pair per method, Adam steps per row; map PCC to the target "
                              "before -> after; perturbation at one scale for all rows")


def claims(run) -> list[dict]:
    return [manipulation_claim(run, m, "manipulation.png", "Fig. 2: target closely emulated, perturbation hardly "
                               "visible, for all six methods", method=m) for m in run.levels("method")] + [
        claim(f"{m}: manipulable (Fig. 2)", "yes", "not run", "not run",
              "not in geomexpl.explain.METHODS" if m in run.cfg["missing"] else "left out for time")
        for m in run.cfg["missing"] + run.cfg.get("skipped", [])]
