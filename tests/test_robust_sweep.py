"""experiments/robust_sweep.py (issue 17): a quick run end to end, its resume and task order, the attack of the
softplus-trained model, and claims that can fail."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments import common, robust_sweep
from geomexpl import data
from geomexpl.nets import softplus_twin, unwrap

MODEL_METRICS = {"test_accuracy", "train_seconds", "kappa_max", "morf_area", "bracket_lower", "bracket_upper_spectral",
                 "bracket_upper_frobenius"}


def _by_key(rows):
    return {(r["task"], r["metric"], r["example"]): float(r["value"]) for r in rows
            if r["metric"] != "train_seconds"}


def test_quick_run_end_to_end_resumes_without_work(tmp_path, monkeypatch):
    calls = []
    real = robust_sweep.attack_batch

    def recording(cfg, method, start, stop, device, **options):
        result, rows = real(cfg, method, start, stop, device, **options)
        calls.append((options, result))
        return result, rows

    monkeypatch.setattr(robust_sweep, "attack_batch", recording)
    run = common.run_study("robust_sweep", tmp_path, quick=True)
    out, cfg = tmp_path / "robust_sweep", run.cfg
    planned = robust_sweep.tasks(cfg)
    assert {r["task"] for r in run.rows} == {t["task"] for t in planned}
    assert len({tuple(r) for r in run.rows}) == 1  # one set of columns for every row
    for task in planned:
        rows = [r for r in run.rows if r["task"] == task["task"]]
        metrics = [r["metric"] for r in rows]
        if task["kind"] == "model":
            assert set(metrics) == MODEL_METRICS and all(r["attack"] == "" for r in rows)
            assert metrics.count("kappa_max") == cfg["kappa_images"]
            assert metrics.count("morf_area") == cfg["flip_images"]
            assert all(np.isfinite(float(r["value"])) for r in rows if r["metric"] != "bracket_upper_frobenius")
        else:
            assert len(rows) == (task["stop"] - task["start"]) * len(robust_sweep.ATTACK_METRICS)
            assert {r["attack"] for r in rows} == {task["kind"]} and all(int(r["steps"]) == cfg["steps"] for r in rows)
    assert {r["defence"] for r in run.rows if r["attack"] in robust_sweep.REFERENCE} == {"plain"}
    assert (out / robust_sweep.FIGURE).stat().st_size > 0 and (out / "summary.csv").stat().st_size > 0
    claims = json.loads((out / "claims.json").read_text())
    assert len(claims) == 2 * len(cfg["defences"]) and all(c["verdict"] in common.VERDICTS for c in claims)
    assert all(c["figure"] == robust_sweep.FIGURE for c in claims)
    weights = sorted(p.name for p in (out / "weights").glob("*.pt"))
    assert len(weights) == len(robust_sweep.models(cfg)) * len(cfg["seeds"])

    # the softplus-trained model is attacked as it is, at its own beta: no growth, no ReLU surrogate
    x = data.load("digits", "test")[0][:2]
    for options, result in calls:
        beta = unwrap(options["net"])[1]
        if beta is None:
            assert "beta_growth" not in options  # Table 1's growth 10 -> 100 on the ReLU models
        else:
            assert options["beta_growth"] is None and result.config.beta_growth is None and beta == 3.0
            with torch.no_grad():
                assert torch.equal(softplus_twin(unwrap(options["net"])[0], beta)(x), options["net"](x))
    assert sum(unwrap(o["net"])[1] is not None for o, _ in calls) == len(robust_sweep.ATTACKS)

    # a second run does no work: no task, no fine-tuning
    ran = []
    monkeypatch.setattr(robust_sweep, "run_task", lambda *args: ran.append(args) or [])
    monkeypatch.setattr("geomexpl.robust.training.finetune", lambda *a, **k: pytest.fail("fine-tuned again"))
    again = common.run_study("robust_sweep", tmp_path, quick=True)
    assert ran == [] and again.rows == run.rows


def test_task_order_does_not_change_the_rows(tmp_path, monkeypatch):
    """Attack tasks first: they fine-tune and save the models, which the model tasks then load."""
    forward = common.run_study("robust_sweep", tmp_path / "forward", quick=True)
    real = robust_sweep.tasks
    monkeypatch.setattr(robust_sweep, "tasks", lambda cfg: real(cfg)[::-1])
    backward = common.run_study("robust_sweep", tmp_path / "backward", quick=True)
    a, b = _by_key(forward.rows), _by_key(backward.rows)
    assert a.keys() == b.keys()
    assert np.allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-5, atol=1e-7, equal_nan=True)


def _synthetic_run(tmp_path, sign: float) -> common.Run:
    """Plain and hessian models (3 seeds); with the strength (sign > 0) the curvature and the map PCC grow."""
    cfg = {"defences": {"hessian": [1e-6, 1e-5, 1e-4]}, "seeds": [0, 1, 2], "linf": 8 / 255, "beta": 10.0}
    rng = np.random.default_rng(0)
    rows = []
    for seed in cfg["seeds"]:
        for level, (defence, strength) in enumerate(robust_sweep.models(cfg)):
            key = {"defence": defence, "strength": strength, "seed": seed}
            rows.append({**key, "attack": "", "example": "", "metric": "test_accuracy", "value": 0.98 - 0.01 * level})
            rows += [{**key, "attack": "", "example": i, "metric": "kappa_max",
                      "value": 5 * (1 + sign * 0.3 * level) + rng.normal(scale=0.05)} for i in range(8)]
            rows += [{**key, "attack": "", "example": i, "metric": "morf_area", "value": 0.4} for i in range(8)]
            rows += [{**key, "attack": attack, "example": j, "metric": "map_pcc",
                      "value": 0.5 + sign * 0.05 * level + rng.normal(scale=0.01)}
                     for attack in robust_sweep.ATTACKS for j in range(16)]
    return common.Run("robust_sweep", tmp_path, cfg, rows)


@pytest.mark.parametrize("sign, expected", [(1.0, "disagree"), (-1.0, "agree")])
def test_claims_can_fail(tmp_path, sign, expected):
    claims = robust_sweep.claims(_synthetic_run(tmp_path, sign))
    assert [c["verdict"] for c in claims] == [expected, expected]
    assert "hessian" in claims[0]["claim"] and "Spearman" in claims[0]["ours"] and "(0.0001)" in claims[1]["claim"]
