"""Curvature against beta (paper sec. 3-4, Figure 4; supplement eq. 15): the measurement against the dense
oracle, the fitted slope, the bound, the Figure-4 verdict, and the check's ability to fail."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geomexpl import data, nets
from geomexpl.geometry import logit, principal_curvatures
from theory_checks import curvature_vs_beta as cb
from theory_checks import theorem1 as t1
from conftest import run_theory_check

BETAS = (0.5, 5.0, 50.0)


@pytest.fixture(scope="module")
def mlp():
    return nets.pretrained("mlp", "digits", progress=False)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "test")[0]


@pytest.fixture(scope="module")
def rows(mlp, digits):
    constants = t1.theorem_constant(mlp, (1, 32, 32))
    return cb.curvature_rows(mlp, "mlp", digits[:3], [0, 1, 2], BETAS, constants), constants


def test_lanczos_top_curvature_matches_the_dense_oracle_on_the_zoo_mlp(mlp, digits):
    # The measured quantity itself: top |kappa| of S at a digit (d = 1024) by batched Lanczos vs the full
    # float64 Hessian. Tolerance 1e-6 relative: Lanczos runs to 1e-7 and the dense eigh is exact to ~1e-13.
    x = digits[:1].double()
    twin = t1.float64_twin(mlp, 5.0)
    f = logit(twin, mlp(digits[:1]).argmax(1))
    lanczos, _ = t1.top_curvature(f, x)
    dense, _ = principal_curvatures(f, x, k=1, method="dense")
    assert float(lanczos[0]) == pytest.approx(abs(float(dense[0, 0])), rel=1e-6)


def test_zoo_mlp_curvatures_are_converged_and_below_both_bounds(rows):
    table, constants = rows
    assert len(table) == len(BETAS) * 3 and constants.frobenius and constants.spectral
    assert all(r["holds_bound"] and r["kappa_relative_residual"] <= cb.RESIDUAL_TOL for r in table)
    assert all(r["bound_spectral"] <= r["bound_frobenius"] for r in table)        # spectral is the tighter C~
    assert cb.measurement_subcheck(table, "mlp").passed
    sub = cb.bound_subcheck(table, "mlp", constants)
    assert sub.passed and sub.numbers["min_log10_looseness_frobenius"] > 0


@settings(deadline=None, max_examples=25)
@given(power=st.floats(-1.0, 2.0), scale=st.floats(math.log(1e-3), math.log(1e3)).map(math.exp),
       noise=st.lists(st.floats(0.5, 2.0), min_size=5, max_size=5))
def test_fitted_slope_recovers_a_power_law(power, scale, noise):
    # median over images of kappa = scale * beta^power * (per-image factor): the slope of log median is power.
    betas = (0.5, 1.0, 2.0, 10.0, 50.0)
    table = [dict(beta=b, kappa_max=scale * b ** power * f) for b in betas for f in noise]
    slopes = cb.fitted_slopes(table)
    for key in ("slope_all", "slope_small_beta", "slope_large_beta"):
        assert slopes[key] == pytest.approx(power, abs=1e-9)


def test_a_wrong_bound_or_an_unconverged_curvature_fails(mlp, digits, rows):
    table, constants = rows
    too_small = t1.Constants(constants.frobenius * 1e-12, constants.spectral * 1e-12, "a constant too small")
    mis_scaled = cb.curvature_rows(mlp, "mlp", digits[:3], [0, 1, 2], BETAS, constants,
                                   bound_beta=lambda beta: beta * 1e-9)
    for wrong, used in ((cb.curvature_rows(mlp, "mlp", digits[:3], [0, 1, 2], BETAS, too_small), too_small),
                        (mis_scaled, constants)):
        sub = cb.bound_subcheck(wrong, "mlp", used)
        assert not sub.passed and sub.numbers["failing"] == len(wrong) and "exceed" in sub.explanation
    unconverged = [dict(r, kappa_relative_residual=1e-3) if i == 4 else r for i, r in enumerate(table)]
    assert not cb.measurement_subcheck(unconverged, "mlp").passed


def _pcc_rows(target_by_beta, original_by_beta):
    return [dict(arch="m", beta=b, image=i, pcc_target=t + 0.01 * i, pcc_original_same_beta=o - 0.01 * i,
                 pcc_original_relu=o) for b, t, o in zip((math.inf, 10.0, 1.0), target_by_beta, original_by_beta)
            for i in range(3)]


def test_figure4_verdict_follows_the_papers_claim():
    assert cb.figure4_subcheck(_pcc_rows((0.9, 0.6, 0.2), (0.3, 0.5, 0.8)), "m").passed
    assert not cb.figure4_subcheck(_pcc_rows((0.2, 0.6, 0.9), (0.3, 0.5, 0.8)), "m").passed   # target kept
    assert not cb.figure4_subcheck(_pcc_rows((0.9, 0.6, 0.2), (0.8, 0.5, 0.3)), "m").passed   # original lost


def test_figure4_rows_on_the_zoo_mlp(mlp, digits):
    rows4 = cb.figure4_rows(mlp, "mlp", digits[:2], digits[[10, 11]], [0, 1], (10.0, 1.0), steps=5, lr=5e-3)
    assert [r["beta"] for r in rows4] == [math.inf, math.inf, 10.0, 10.0, 1.0, 1.0]
    for r in rows4:
        assert all(-1 - 1e-6 <= r[k] <= 1 + 1e-6 for k in ("pcc_target", "pcc_original_same_beta", "pcc_original_relu"))
    relu = [r for r in rows4 if r["beta"] == math.inf]
    assert all(r["pcc_original_same_beta"] == r["pcc_original_relu"] for r in relu)   # same map at the ReLU end


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("curvature")
    return out, run_theory_check("curvature-vs-beta", "--quick", "--out", str(out))


def test_quick_cli_run_passes_and_writes_tables_plots_and_report(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (check,) = json.loads((out / "results.json").read_text())["checks"]
    assert [sub["name"] for sub in check["subchecks"]] == ["curvature_measurement_mlp", "curvature_bound_mlp",
                                                          "figure4_beta_smoothing_mlp"]
    assert all(sub["passed"] for sub in check["subchecks"])
    assert sorted(Path(p).name for p in check["files"]) == ["curvature_vs_beta.csv", "curvature_vs_beta.png",
                                                            "figure4_pcc.csv", "figure4_pcc.png"]
    assert all((out / path).stat().st_size > 0 for path in check["files"])
    table = (out / "curvature-vs-beta" / "curvature_vs_beta.csv").read_text().splitlines()
    assert len(table) == 1 + cb.QUICK["images"] * len(cb.QUICK["betas"])
    assert "curvature_bound_mlp — **PASS**" in (out / "report.md").read_text()
