"""The paper-budget studies' plumbing: extending a stored run, task plans (fig3's N per method and
rate conventions, the photo sizes, the depth nets), and a study's own net in attack_batch."""
from __future__ import annotations

import json

import pytest
import torch

from experiments import common, depth, fig3_similarity, photos
from geomexpl import runs
from geomexpl.nets import vgg_of_depth
from geomexpl.nets.zoo import DEPTH_STAGES


def test_extend_takes_more_pairs_and_keeps_finished_tasks(tmp_path):
    common.run_study("orthogonality", tmp_path, quick=True)
    workdir = tmp_path / "orthogonality"
    before = runs.ResultTable(workdir / "results.csv", key=("task",)).rows
    module = common.study("orthogonality")
    ran = []
    real = module.run_task

    def counting(cfg, task, device, wd):
        ran.append(task["task"])
        return real(cfg, task, device, wd)

    quick = module.config

    def more_pairs(q):
        return {**quick(q), "n": 4, "note": "quick, 4 pairs."}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "config", more_pairs)
        mp.setattr(module, "run_task", counting)
        with pytest.raises(ValueError, match="holds a run with other options"):
            common.run_study("orthogonality", tmp_path, quick=True)  # without --extend: refused, nothing run
        assert ran == []
        run = common.run_study("orthogonality", tmp_path, quick=True, extend=True)
    assert ran == ["2-4"]  # only the new pairs
    assert json.loads((workdir / "config.json").read_text())["options"]["n"] == 4
    assert [r for r in run.rows if r["task"] == "0-2"] == before


def test_extend_refuses_options_that_change_finished_tasks(tmp_path):
    common.run_study("orthogonality", tmp_path, quick=True)
    module = common.study("orthogonality")
    quick = module.config
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "config", lambda q: {**quick(q), "pgd_eps": 0.1})
        with pytest.raises(ValueError, match=r"cannot extend .* differ in \['pgd_eps'\]"):
            common.run_study("orthogonality", tmp_path, quick=True, extend=True)


def test_fig3_plans_its_pairs_per_method_unit_rate_first_and_integrated_gradients_last():
    cfg = {"study": "fig3_similarity", "quick": False, "seed": 0, **fig3_similarity.config(False)}
    plan = fig3_similarity.tasks(cfg)
    count = {(m, r): sum(t["stop"] - t["start"] for t in plan if (t["method"], t["rate"]) == (m, r))
             for m in cfg["methods"] for r in cfg["rates"]}
    assert count[("gradient", "unit")] == count[("lrp", "table")] == 100
    assert count[("guided_backprop", "unit")] == count[("integrated_gradients", "table")] == 32
    rates = [t["rate"] for t in plan]
    assert rates == sorted(rates, key=cfg["rates"].index)  # every 'unit' task before any 'table' one
    unit = [t for t in plan if t["rate"] == "unit"]
    assert unit[-1]["method"] == "integrated_gradients" and unit[-2]["method"] != "integrated_gradients"
    assert {t["method"] for t in unit[:len(cfg["methods"]) - 1]} == set(cfg["methods"]) - {"integrated_gradients"}


def test_photo_tasks_keep_the_64_keys_and_carry_the_size_in_the_key():
    cfg = {"study": "photos", "quick": False, "seed": 0, **photos.config(False)}
    keys = [t["task"] for t in photos.tasks(cfg)]
    assert "vgg/photos/lrp/table/0-4" in keys  # the keys of the finished 64x64 tasks are unchanged
    big = [t for t in photos.tasks(cfg) if t["size"] == 128]
    assert {t["method"] for t in big} == {"gradient"} and len(big) == 2 * cfg["n"] // cfg["batch"]  # two rates
    assert photos.size_of({"task": big[0]["task"]}) == 128 and photos.size_of({"task": keys[0]}) == 64


@pytest.mark.parametrize("layers", sorted(DEPTH_STAGES))
def test_depth_nets_have_their_number_of_convolutions_and_one_width(layers):
    net = vgg_of_depth(layers).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == layers and {c.out_channels for c in convs} == {16}
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="takes a batch"):
        net(torch.rand(2, 1, 28, 28))


def test_depth_of_no_plan_is_refused():
    with pytest.raises(ValueError, match="depth must be one of"):
        vgg_of_depth(7)


def test_depth_weights_are_trained_once_and_reloaded(tmp_path):
    depth.depth_net.cache_clear()
    first, meta = depth.depth_net(str(tmp_path), 4, 0, 16, 1, "cpu")
    path = depth.weight_file(tmp_path, 4, 0)
    assert path.is_file() and meta["epochs"] == 1
    depth.depth_net.cache_clear()
    again, meta2 = depth.depth_net(str(tmp_path), 4, 0, 16, 1, "cpu")
    assert meta2["test_accuracy"] == meta["test_accuracy"]
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    depth.depth_net.cache_clear()


def test_attack_batch_takes_a_studys_own_net_but_fits_no_patterns_for_it():
    cfg = {"n": 2, "seed": 0, "steps": 2}
    net = vgg_of_depth(4).eval().requires_grad_(False)
    result, rows = common.attack_batch(cfg, "gradient", 0, 2, "cpu", net=net)
    assert len(rows) == 2 and result.config.steps == 2
    with pytest.raises(ValueError, match="needs patterns fitted on the zoo net"):
        common.attack_batch(cfg, "pattern_attribution", 0, 2, "cpu", net=net)


def test_report_only_remakes_figures_and_report_without_running_a_task(tmp_path, monkeypatch):
    from experiments.__main__ import main

    assert main(["orthogonality", "--out", str(tmp_path), "--quick"]) == 0
    (tmp_path / "orthogonality" / "orthogonality.png").unlink()
    (tmp_path / "REPORT.md").unlink()
    module = common.study("orthogonality")
    monkeypatch.setattr(module, "run_task", lambda *a: pytest.fail("--report-only ran a task"))
    assert main(["orthogonality", "--out", str(tmp_path), "--report-only"]) == 0
    assert (tmp_path / "orthogonality" / "orthogonality.png").stat().st_size > 0
    assert "## orthogonality:" in (tmp_path / "REPORT.md").read_text()


@pytest.mark.parametrize("name", common.STUDIES)
def test_no_task_asks_for_more_pairs_than_the_run_draws(name):
    """attack_batch draws cfg['n'] seeded pairs: a task reaching past them would fail hours into a run."""
    module = common.study(name)
    for quick in (True, False):
        cfg = {"study": name, "quick": quick, "seed": 0, **module.config(quick)}
        stops = [t["stop"] for t in module.tasks(cfg) if "stop" in t]
        assert not stops or max(stops) <= cfg["n"], (name, quick)
