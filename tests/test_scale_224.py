"""The 224x224 section of the theory checks on small stand-ins: Theorem 1's run at 224 writes and reads back its
tables, its sub-check counts the tests a 20% low curvature would fail, and the curvature sub-check fails on a
curvature that does not rise with beta or on an unconverged Ritz value."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from geomexpl.nets.softplus import count_relus
from theory_checks import curvature_vs_beta_224 as curv
from theory_checks import scale_224, theorem1_224
from theory_checks.report import write_csv


def tiny_relu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 3)).eval().requires_grad_(False)


def test_average_pools_keep_the_geometry_and_remove_every_max_pool():
    net = tiny_relu_net()
    x = torch.rand(2, 3, 8, 8)
    before = net(x).shape
    smooth = theorem1_224.average_pools(net)
    assert not any(isinstance(m, nn.MaxPool2d) for m in smooth.modules())
    assert isinstance(smooth[2], nn.AvgPool2d) and smooth[2].kernel_size == 2 and smooth[2].stride == 2
    assert smooth(x).shape == before and count_relus(smooth, x) == 2


def test_measure_writes_tables_and_reads_them_back(tmp_path, monkeypatch):
    size = dict(attack_steps=0, max_points=5, ascent_steps=0, refine_rounds=0, tight_scales=(0.1,))
    monkeypatch.setattr(theorem1_224, "setup", lambda side, max_pools=False: (
        theorem1_224.average_pools(tiny_relu_net()), torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1))))
    summary = theorem1_224.measure(tmp_path, side=8, size=size)
    assert summary["config"]["d"] == 3 * 8 * 8 and summary["config"]["pools"] == "average"
    assert summary["passed"] and summary["tests"] >= 3 and summary["counts"]["exempt"] == 0
    segments = theorem1_224.read_segments(tmp_path)
    assert len(segments) == summary["counts"]["segments"] and all(isinstance(r["ratio"], float) for r in segments)
    monkeypatch.setattr(theorem1_224, "setup", lambda *a, **k: pytest.fail("a stored run is measured again"))
    assert theorem1_224.measure(tmp_path, side=8, size=size) == json.loads((tmp_path / "bracket.json").read_text())


def _summary(passed=True) -> dict:
    counts = dict(segments=3, tests=3, informative=3, failed=0 if passed else 1, exempt=0, ratio_median=0.5,
                  ratio_p90=0.85, ratio_max=0.95)
    return dict(config=theorem1_224.configuration(224), counts=counts, passed=passed, bracket={"lower": 0.1, "upper_spectral": 3.0, "point_bound_violations": 0},
                seconds=1.0, threads=1, notes=["one image", "constants: no spectral C~"])


def test_theorem1_subcheck_counts_the_tests_a_low_curvature_would_fail():
    segments = [dict(verdict="PASS", informative=True, ratio=r) for r in (0.5, 0.85, 0.95)]
    segments.append(dict(verdict="PASS", informative=False, ratio=0.99))   # trivial: cannot fail
    sub = scale_224.theorem1_subcheck(_summary(), segments)
    assert sub.passed and sub.numbers["informative tests failed by a 20% low kappa"] == 2
    assert "no spectral" in sub.explanation
    assert not scale_224.theorem1_subcheck(_summary(passed=False), segments).passed


def _rows(kappa_by_beta: dict, residual=1e-5) -> list[dict]:
    return [dict(beta=b, image=i, cls="0", kappa_max=k * (1 + 0.1 * i), relative_residual=residual, grad_norm=1.0,
                 hvps=10.0, batch_seconds=2.0, d=3 * 224 * 224.0) for b, k in kappa_by_beta.items() for i in range(2)]


def test_curvature_subcheck_needs_a_rising_median_and_converged_ritz_values():
    rising = {1.0: 0.01, 5.0: 0.03, 20.0: 0.08, 50.0: 0.1}
    sub = scale_224.curvature_subcheck(_rows(rising))
    assert sub.passed and sub.name == "curvature_vs_beta_224" and sub.numbers["seconds (all betas)"] == 8.0
    assert sub.numbers["slope of log median abs(kappa_max) on log beta"] > 0
    assert not scale_224.curvature_subcheck(_rows({**rising, 50.0: 0.07})).passed
    assert not scale_224.curvature_subcheck(_rows(rising, residual=20 * curv.TOL)).passed


def test_run_reads_stored_tables_without_measuring(tmp_path, monkeypatch):
    folder = tmp_path / "curvature-224"
    folder.mkdir()
    curv.append_rows(folder / curv.CSV, _rows({b: 0.01 * b ** 0.7 for b in curv.BETAS}))
    (tmp_path / "theorem1-224").mkdir()
    write_csv(tmp_path / "theorem1-224" / "segments.csv",
              [dict(kind="tight", image=0, verdict="PASS", informative=True, ratio=0.9, rhs=0.1)])
    (tmp_path / "theorem1-224" / "bracket.json").write_text(json.dumps({**_summary(), "informative": 1, "tests": 1}))
    monkeypatch.setattr(curv, "setup", lambda *a, **k: pytest.fail("stored betas are measured again"))
    result = scale_224.run(tmp_path, quick=False, seed=0)
    assert result.passed and [s.name for s in result.subchecks] == ["curvature_vs_beta_224", "theorem1_224"]
    assert (tmp_path / "theorem1-224" / "segment_ratios.png").stat().st_size > 0


def test_report_command_adds_the_section_and_keeps_the_others(tmp_path, monkeypatch):
    from theory_checks.report import CheckResult, SubCheck, read_run, write_run

    other = CheckResult("theorem2", "t2", "s", [SubCheck("a", "m", {}, None, "r", True)])
    write_run([other], tmp_path, dict(seed=0, quick=False, device="cpu", versions={}, checks=["theorem2"]))
    fake = CheckResult(scale_224.NAME, "t", "s", [SubCheck("b", "m", {"x": 1.0}, None, "r", True)])
    monkeypatch.setattr(scale_224, "run", lambda out, quick, seed: fake)
    assert scale_224.main(["--report", str(tmp_path)]) == 0
    results, config = read_run(tmp_path)
    assert [r.name for r in results] == ["theorem2", scale_224.NAME] and config["checks"] == ["theorem2", "scale-224"]
    assert "## scale-224" in (tmp_path / "report.md").read_text()


def test_committed_section_is_rederived_from_the_committed_tables(tmp_path):
    """The scale-224 section of theory_checks/full_report comes from its stored tables, nothing measured."""
    import shutil
    from pathlib import Path
    from theory_checks.report import read_run

    committed = Path(__file__).resolve().parents[1] / "theory_checks" / "full_report"
    for part in ("curvature-224", "theorem1-224"):
        shutil.copytree(committed / part, tmp_path / part)
    result = scale_224.run(tmp_path, quick=False, seed=0)
    stored = next(r for r in read_run(committed)[0] if r.name == scale_224.NAME)
    assert [(s.name, s.passed, s.numbers, s.explanation) for s in result.subchecks] == \
        [(s.name, s.passed, s.numbers, s.explanation) for s in stored.subchecks]
