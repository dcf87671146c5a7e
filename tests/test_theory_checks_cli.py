"""``python -m theory_checks``: files written, exit codes, the registry of checks."""
from __future__ import annotations

import json

import torch

import theory_checks.__main__ as cli
from theory_checks import theorem2

from conftest import run_theory_check


FAKE_CHECK = '''
from theory_checks.report import CheckResult, SubCheck
NAME = "fake"
def run(out_dir, quick, seed):
    sub = SubCheck("always_{verdict}", "nothing", {{"seed": seed}}, None, "none", {passed})
    return CheckResult(NAME, "a stand-in", "summary", [sub])
'''


def test_quick_run_writes_report_tables_plots_and_config(tmp_path):
    out = tmp_path / "run"
    proc = run_theory_check("theorem2", "--quick", "--out", str(out), "--seed", "3", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    report = (out / "report.md").read_text()
    assert results["passed"] and [check["name"] for check in results["checks"]] == ["theorem2"]
    check = results["checks"][0]
    assert len(check["subchecks"]) == 5 and all(sub["passed"] for sub in check["subchecks"])
    files = check["files"] + [path for sub in check["subchecks"] for path in sub["files"]]
    assert sum(path.endswith(".png") for path in files) == 3 and sum(path.endswith(".csv") for path in files) >= 5
    assert all((out / path).stat().st_size > 0 for path in files)
    assert config["seed"] == 3 and config["quick"] and config["device"]
    assert set(config["versions"]) >= {"python", "torch", "numpy", "scipy"}
    for sub in check["subchecks"]:
        assert f"### {sub['name']} — **PASS**" in report
    assert "FAIL" not in report


def test_exit_code_is_nonzero_when_a_quantity_is_wrong(tmp_path, monkeypatch, capsys):
    # grad softplus_beta(w.x) instead of grad softplus_{beta/|w|}(w.x): the exact sub-checks must fail.
    monkeypatch.setattr(theorem2, "closed_form_gradient", lambda x, w, beta: w * torch.sigmoid(beta * (x @ w))[:, None])
    assert cli.main(["theorem2", "--quick", "--out", str(tmp_path)]) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    verdicts = {sub["name"]: sub["passed"] for sub in results["checks"][0]["subchecks"]}
    assert not results["passed"]
    assert not verdicts["d1_quadrature_exact"] and not verdicts["mc_single_nonzero_weight_exact"]
    assert "**FAIL**" in (tmp_path / "report.md").read_text()
    assert "FAIL" in capsys.readouterr().out


def test_all_runs_every_registered_check_and_fails_if_one_fails(tmp_path, monkeypatch):
    for verdict, passed in (("pass", True), ("fail", False)):
        (tmp_path / f"fake_{verdict}.py").write_text(FAKE_CHECK.format(verdict=verdict, passed=passed))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "CHECKS", {"theorem2": "fake_pass"})
    assert cli.main(["all", "--out", str(tmp_path / "a"), "--seed", "5"]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["checks"] == ["theorem2"]
    assert "always_pass" in (tmp_path / "a" / "report.md").read_text()
    monkeypatch.setattr(cli, "CHECKS", {"theorem1": "fake_fail", "theorem2": "fake_pass"})
    assert cli.main(["all", "--out", str(tmp_path / "b")]) == 1
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [check["passed"] for check in results["checks"]] == [False, True]  # CHECKS order: theorem1 first


DEVICE_CHECK = '''
from theory_checks.report import CheckResult, SubCheck
NAME = "on_device"
def run(out_dir, quick, seed, device):
    sub = SubCheck("device_seen", "the device handed to the check", {"device": str(device)}, None, "none", True)
    return CheckResult(NAME, "a stand-in", "summary", [sub])
'''


def test_device_goes_to_checks_that_take_one_and_into_the_run_options(tmp_path, monkeypatch, capsys):
    (tmp_path / "on_device.py").write_text(DEVICE_CHECK)
    (tmp_path / "fake_pass.py").write_text(FAKE_CHECK.format(verdict="pass", passed=True))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "CHECKS", {"theorem1": "on_device", "theorem2": "fake_pass"})
    assert cli.main(["all", "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["checks"][0]["subchecks"][0]["numbers"]["device"] == "cpu"
    assert json.loads((tmp_path / "a" / "config.json").read_text())["options"]["device_type"] == "cpu"
    if not torch.cuda.is_available():
        assert cli.main(["all", "--out", str(tmp_path / "b"), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
        assert not (tmp_path / "b").exists()
