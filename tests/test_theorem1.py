"""Theorem 1 (paper sec. 3, supplement E.1): property tests of both inequalities on random softplus nets,
the refinement of under-sampled curves, and the check's ability to fail on wrong quantities."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from geomexpl import nets
from geomexpl.geometry import (check_hessian_bound, curvature_constant, gradient, logit, principal_curvatures,
                               unit_normal)
from theory_checks import theorem1 as t1
from conftest import run_theory_check

SETTINGS = settings(deadline=None, max_examples=15)
TINY = dict(t1.QUICK, betas=(5.0,), images=1, attack_steps=20, record_every=5)


def dense_curvature(f, x):
    """|kappa_max| from the dense Hessian oracle (all d-1 curvatures), relative residual."""
    kappa, info = principal_curvatures(f, x, k=1, method="dense")
    size = kappa[:, 0].abs()
    return size, info.residuals[:, 0] / size.clamp_min(1e-300)


def scaled(curvature, factor):
    """A deliberately wrong curvature: the right one times ``factor``."""
    return lambda f, x: (curvature(f, x)[0] * factor, curvature(f, x)[1])


def relu_net(d: int, width: int, depth: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 2)).double().eval().requires_grad_(False)


class Scalar(nn.Module):
    """An explicit level-set function as a one-output 'network' [B, d] -> [B, 1]."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)[:, None]


def curve_through(model, points: torch.Tensor, cls: int = 0, curvature=dense_curvature) -> t1.CurveOnS:
    level = float(logit(model, cls)(points[:1]))
    samples = t1.sample_on_level_set(model, points, torch.full((len(points),), cls),
                                     torch.full((len(points),), level, dtype=points.dtype), curvature)
    return t1.CurveOnS("test", "test", 1.0, 0, cls, level, torch.arange(len(points), dtype=torch.float64), samples)


@SETTINGS
@given(d=st.integers(2, 10), width=st.integers(2, 12), depth=st.integers(1, 2), seed=st.integers(0, 2**16),
       beta=st.floats(math.log(0.5), math.log(50.0)).map(math.exp), radius=st.floats(0.05, 3.0))
def test_first_inequality_along_random_curves_on_random_softplus_nets(d, width, depth, seed, beta, radius):
    # Theorem 1 (eq. 3) along a random smooth curve projected onto S, sup|kappa| estimated densely (65 points,
    # all d-1 curvatures from the dense Hessian) and refined where the sampled chain breaks. Tolerance REL_TOL:
    # float64 and the exact dense eigenvalues leave ~1e-12 relative error; sampling is handled by refinement.
    twin = nets.softplus_twin(relu_net(d, width, depth, seed), beta)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, d, generator=gen, dtype=torch.float64)
    assume(float(gradient(logit(twin, 0), x0).norm()) > 1e-6)
    normal = unit_normal(logit(twin, 0), x0)
    path = t1.random_curves(x0, normal, torch.tensor([radius], dtype=torch.float64), 65, gen)[:, 0]
    assert torch.equal(path[0], x0[0])
    curve = curve_through(twin, path)
    assume(float(curve.samples.level_error.max()) <= t1.LEVEL_TOL * max(1.0, abs(curve.level)))
    t1.refine([curve], twin, rounds=4, segments=4, split=4, curvature=dense_curvature)
    q = t1.curve_quantities(curve.samples)
    assert q["lhs"] <= q["turning"] * (1 + 1e-12)                    # triangle inequality of the discrete chain
    assert q["holds"], (q["lhs"], q["rhs"], curve.refinements)


@SETTINGS
@given(d=st.integers(2, 10), width=st.integers(1, 12), depth=st.integers(1, 3), seed=st.integers(0, 2**16),
       beta=st.floats(math.log(0.1), math.log(100.0)).map(math.exp), scale=st.floats(0.2, 3.0))
def test_every_principal_curvature_is_bounded_by_beta_c_tilde_over_grad_norm(d, width, depth, seed, beta, scale):
    # eq. (15): |lambda| <= |H|_F / |grad g| <= beta C~ / c, c = |grad g| at the point (and hence at least the
    # min along any curve through it). Exact inequalities, so the tolerance is float64 rounding (BOUND_TOL).
    net = relu_net(d, width, depth, seed)
    with torch.no_grad():
        for module in net:
            if isinstance(module, nn.Linear):
                module.weight.mul_(scale)
    twin = nets.softplus_twin(net, beta)
    constant = curvature_constant(twin)
    x = torch.randn(6, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    f = logit(twin, 1)
    grad = gradient(f, x).norm(dim=1)
    assume(bool((grad > 1e-8).all()))
    kappa, _ = principal_curvatures(f, x, k=d - 1, method="dense")
    assert (kappa.abs().amax(1) <= beta * constant / grad * (1 + t1.BOUND_TOL)).all()
    assert check_hessian_bound(f, x, beta, constant).holds.all()


def test_great_circle_chord_is_the_equality_case_and_a_too_small_curvature_fails():
    # On a sphere of radius r, |n(p) - n(p0)| = |p - p0| / r = kappa x chord: two samples give equality.
    r = 2.5
    sphere = Scalar(lambda z: z.norm(dim=1))
    theta = torch.tensor([0.0, 1.0], dtype=torch.float64)
    points = r * torch.stack([torch.cos(theta), torch.sin(theta), torch.zeros(2, dtype=torch.float64)], dim=1)
    curve = curve_through(sphere, points)
    q = t1.curve_quantities(curve.samples)
    assert q["kappa_max"] == pytest.approx(1 / r, rel=1e-12)
    assert q["lhs"] == pytest.approx(q["rhs"], rel=1e-12) and q["holds"]
    # kappa / 2 is wrong by more than the arc / chord slack 1 / (2 sin(1/2)) = 1.043: refinement must not rescue it
    wrong = curve_through(sphere, points, curvature=scaled(dense_curvature, 0.5))
    t1.refine([wrong], sphere, rounds=3, segments=2, split=4, curvature=scaled(dense_curvature, 0.5))
    assert len(wrong.refinements) == 3 and not any(h["holds"] for h in wrong.refinements)
    slacks = [h["slack"] for h in wrong.refinements]     # the polyline's length grows towards the arc's
    assert 0.5 < slacks[0] < slacks[1] < slacks[2] < 0.5 / (2 * math.sin(0.5))


def test_refinement_finds_curvature_hidden_between_samples():
    # S: x2 = sp_10(x1) + c. At x1 = +-2 the curve is almost straight (|kappa| ~ 1e-8) yet the normal turns by
    # 45 degrees in between: a sampling artefact that subdividing the segment resolves.
    beta = 10.0
    kink = Scalar(lambda z: z[:, 1] - F.softplus(z[:, 0], beta=beta))
    x1 = torch.tensor([-2.0, 2.0], dtype=torch.float64)
    points = torch.stack([x1, F.softplus(x1, beta=beta)], dim=1)
    curve = curve_through(kink, points)
    before = t1.curve_quantities(curve.samples)
    assert not before["holds"] and before["lhs"] == pytest.approx(2 * math.sin(math.pi / 8), rel=1e-6)
    t1.refine([curve], kink, rounds=3, segments=1, split=4, curvature=dense_curvature)
    after = t1.curve_quantities(curve.samples)
    assert after["holds"] and 1 <= len(curve.refinements) <= 3 and curve.refinements[-1]["holds"]
    peak = max(beta * s * (1 - s) / (1 + s * s) ** 1.5 for s in torch.sigmoid(torch.linspace(-20, 20, 4001)).tolist())
    assert 0.1 * peak < after["kappa_max"] <= peak * (1 + 1e-9)          # the graph's curvature y'' / (1 + y'^2)^1.5


@pytest.fixture(scope="module")
def mlp():
    return nets.pretrained("mlp", "digits", progress=False)


@pytest.fixture(scope="module")
def mlp_rows(mlp):
    return t1.check_model(mlp, "mlp", TINY, seed=1)


def test_zoo_mlp_curves_satisfy_both_inequalities(mlp_rows):
    assert {r["kind"] for r in mlp_rows} == {"attack", "random", "geodesic"}
    for r in mlp_rows:
        assert r["on_level_set"] and r["holds"] and r["holds_bound"] and r["lhs"] > 0
        assert r["max_kappa_residual"] <= 10 * t1.LANCZOS_TOL
        assert r["length"] >= r["euclidean"] * (1 - 1e-12)             # polylines on S are at least the chord
    for kind in ("attack", "random", "geodesic"):
        assert t1.first_inequality_subcheck(mlp_rows, "mlp", kind).passed
    assert t1.constant_bound_subcheck(mlp_rows, "mlp").passed


def test_too_small_curvature_fails_even_after_refinement(mlp):
    rows = t1.check_model(mlp, "mlp", TINY, seed=1, curvature=scaled(t1.top_curvature, 1e-3))
    for kind in ("attack", "random", "geodesic"):
        sub = t1.first_inequality_subcheck(rows, "mlp", kind)
        assert not sub.passed and sub.numbers["failing_after_refinement"] == 1
        assert "violate" in sub.explanation
    assert all(r["refinement_rounds"] == TINY["refine_rounds"] for r in rows)


@pytest.mark.parametrize("inject", [dict(constants=t1.Constants(1e-3, 1e-3, "a constant too small")),
                                    dict(bound_beta=lambda beta: beta * 1e-9)])
def test_wrong_constant_or_mis_scaled_beta_fails_the_bound(mlp, mlp_rows, inject):
    # The zoo MLP's bound is loose by ~10^6, so only a grossly wrong quantity can fail it.
    assert min(r["log10_looseness_spectral"] for r in mlp_rows) < 8
    rows = t1.check_model(mlp, "mlp", TINY, seed=1, **inject)
    sub = t1.constant_bound_subcheck(rows, "mlp")
    assert not sub.passed and sub.numbers["failing"] == len(rows)


def test_pool_switches_and_the_selection_surrogate_bound():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(2 * 4 * 4, 3)).double().eval().requires_grad_(False)
    beta = 3.0
    twin = nets.softplus_twin(net, beta)
    a = torch.randn(1, 8, 8, dtype=torch.float64)
    assert t1.pool_switches(twin, a, a.clone()) == 0
    assert t1.pool_switches(twin, a, -a) > 0
    assert t1.pool_switches(nets.softplus_twin(relu_net(3, 4, 1, 0), 1.0), a[0, :1, :3], a[0, :1, :3]) is None
    constants = t1.theorem_constant(net, (1, 8, 8))
    assert "selection" in constants.note and constants.spectral is not None
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for cls in range(3):        # off the tie set the twin is smooth and |H|_F <= beta C~ (eq. 10) holds
        assert check_hessian_bound(logit(twin, cls), x, beta, constants.frobenius).holds.all()
        kappa, info = principal_curvatures(logit(twin, cls), x, k=63, method="dense")   # and every |kappa| is bounded
        assert (kappa.abs().amax(1) <= beta * constants.spectral / info.grad_norm).all()
    # the zoo's ResNet (residual additions): no eq. (10) constant, only the spectral graph bound
    resnet = t1.theorem_constant(nets.pretrained("resnet", "digits", progress=False), (1, 32, 32))
    assert resnet.frobenius is None and resnet.spectral > 0 and "frobenius" in resnet.note


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("theorem1")
    return out, run_theory_check("theorem1", "--quick", "--out", str(out))


def test_quick_cli_run_passes_and_writes_table_plots_and_report(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    (check,) = results["checks"]
    names = [sub["name"] for sub in check["subchecks"]]
    assert names == ["first_inequality_attack_mlp", "first_inequality_random_mlp", "first_inequality_geodesic_mlp",
                     "curvature_bound_mlp"]
    assert all(sub["passed"] for sub in check["subchecks"])
    assert sum(path.endswith(".png") for path in check["files"]) == 2
    assert all((out / path).stat().st_size > 0 for path in check["files"])
    table = (out / "theorem1" / "curves.csv").read_text().splitlines()
    assert len(table) == 1 + 3 * len(t1.QUICK["betas"]) * t1.QUICK["images"]
    report = (out / "report.md").read_text()
    assert "first_inequality_geodesic_mlp — **PASS**" in report and "**FAIL**" not in report
