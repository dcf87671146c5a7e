"""Principal curvatures on surfaces with known curvature, and solvers against the dense oracle.

Sign convention under test (paper sec. 3): L = P H P / |grad f| on T_pS, so the sphere f = |x| of
radius r has every kappa = +1/r and a f + b with a < 0 flips every sign.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomexpl.geometry import (HessianVectorProduct, batched_lanczos, hessian, hvp, logit, principal_curvatures,
                               shape_operator, unit_normal)

SETTINGS = settings(deadline=None, max_examples=10)
METHODS = ("lanczos", "torch", "dense")


def sphere(center: torch.Tensor):
    return lambda z: (z - center).norm(dim=1)


def random_orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def softplus_net(d: int, seed: int, beta: float = 2.0, width: int = 12) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Softplus(beta), nn.Linear(width, width),
                         nn.Softplus(beta), nn.Linear(width, 3)).double()


@SETTINGS
@given(d=st.integers(2, 50), radius=st.floats(1e-2, 1e2), seed=st.integers(0, 2**16),
       method=st.sampled_from(METHODS))
def test_sphere_has_all_curvatures_one_over_radius(d, radius, seed, method):
    gen = torch.Generator().manual_seed(seed)
    center = torch.randn(d, generator=gen, dtype=torch.float64)
    u = torch.randn(3, d, generator=gen, dtype=torch.float64)
    x = center + radius * u / u.norm(dim=1, keepdim=True)
    k = min(d - 1, 4)
    kappa, info = principal_curvatures(sphere(center), x, k=k, method=method, tol=1e-12)
    torch.testing.assert_close(kappa, torch.full((3, k), 1 / radius, dtype=torch.float64), rtol=1e-9, atol=0)
    assert (info.residuals <= 1e-9 / radius).all()


@SETTINGS
@given(d=st.integers(3, 30), seed=st.integers(0, 2**16), up=st.booleans(), method=st.sampled_from(METHODS))
def test_paraboloid_vertex_curvatures_are_the_coefficients(d, seed, up, method):
    """f = x_d - 1/2 sum a_i x_i^2 at 0: n = e_d, H = -diag(a), kappa = -a_i; f -> -f gives +a_i."""
    a = torch.empty(d - 1, dtype=torch.float64).uniform_(-5, 5, generator=torch.Generator().manual_seed(seed))
    sign = 1.0 if up else -1.0

    def f(z):
        return sign * (z[:, -1] - 0.5 * (a * z[:, :-1] ** 2).sum(1))

    k = min(d - 1, 5)
    expected = -sign * a
    for which, key in (("LM", -expected.abs()), ("LA", -expected), ("SA", expected)):
        kappa, _ = principal_curvatures(f, torch.zeros(2, d, dtype=torch.float64), k=k, which=which,
                                        method=method, tol=1e-12)
        want = expected[key.argsort(stable=True)][:k]
        torch.testing.assert_close(kappa, want.expand(2, k), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(axes=st.lists(st.floats(0.2, 5.0), min_size=2, max_size=12), method=st.sampled_from(METHODS))
def test_ellipsoid_vertex(axes, method):
    """sum x_i^2 / a_i^2 = 1 at (0, .., 0, a_d): kappa_i = a_d / a_i^2 (ellipse: b / a^2 at (0, b))."""
    a = torch.tensor(axes, dtype=torch.float64)
    x = torch.zeros(1, len(axes), dtype=torch.float64)
    x[0, -1] = a[-1]
    k = len(axes) - 1
    kappa, _ = principal_curvatures(lambda z: (z ** 2 / a ** 2).sum(1), x, k=k, method=method, tol=1e-12)
    expected = (a[-1] / a[:-1] ** 2).sort(descending=True).values
    torch.testing.assert_close(kappa[0], expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_cylinder_is_flat_along_its_axis(method):
    """|x_{:m}| = r in R^d: m-1 curvatures 1/r, d-m zero curvatures whose directions span the axis."""
    d, m, r = 12, 4, 0.7
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, d, generator=gen, dtype=torch.float64)
    x[:, :m] *= r / x[:, :m].norm(dim=1, keepdim=True)
    kappa, info = principal_curvatures(lambda z: z[:, :m].norm(dim=1), x, k=d - 1, which="LA",
                                       method=method, tol=1e-12)
    expected = torch.tensor([1 / r] * (m - 1) + [0.0] * (d - m), dtype=torch.float64)
    torch.testing.assert_close(kappa, expected.expand(2, -1), rtol=1e-9, atol=1e-9)
    flat = info.directions[:, m - 1:]
    assert flat[..., :m].abs().max() < 1e-8            # zero-curvature directions lie along the axis
    torch.testing.assert_close(flat.norm(dim=-1), torch.ones(2, d - m, dtype=torch.float64))


@SETTINGS
@given(d=st.integers(3, 20), seed=st.integers(0, 2**16))
def test_curvatures_invariant_under_orthogonal_change_of_coordinates(d, seed):
    gen = torch.Generator().manual_seed(seed)
    net, q = softplus_net(d, seed), random_orthogonal(d, gen)
    f, x = logit(net, 0), torch.randn(3, d, generator=gen, dtype=torch.float64)
    k = min(d - 1, 4)
    kappa, info = principal_curvatures(f, x, k=k, tol=1e-12)
    rotated, info_q = principal_curvatures(lambda y: f(y @ q), x @ q.T, k=k, tol=1e-12)
    torch.testing.assert_close(rotated, kappa, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(info_q.normal, info.normal @ q.T, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(a=st.floats(-50, 50).filter(lambda v: abs(v) > 1e-2), b=st.floats(-10, 10), seed=st.integers(0, 99))
def test_affine_change_of_f_keeps_magnitudes_and_flips_sign_with_a(a, b, seed):
    net = softplus_net(6, seed)
    f = logit(net, 1)
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    kappa, _ = principal_curvatures(f, x, k=4, method="dense")
    scaled, _ = principal_curvatures(lambda z: a * f(z) + b, x, k=4, method="dense")
    torch.testing.assert_close(scaled, np.sign(a) * kappa, rtol=1e-9, atol=1e-12)


@settings(deadline=None, max_examples=10)
@given(d=st.integers(3, 64), seed=st.integers(0, 2**16), which=st.sampled_from(("LM", "LA", "SA")))
def test_solvers_match_dense_oracle_on_softplus_nets(d, seed, which):
    net = softplus_net(d, seed, beta=float(1 + seed % 7))
    f = logit(net, None)
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    k = min(d - 1, 6)
    oracle, info_o = principal_curvatures(f, x, k=k, which=which, method="dense")
    for method in ("lanczos", "torch"):
        kappa, info = principal_curvatures(f, x, k=k, which=which, method=method, tol=1e-13)
        torch.testing.assert_close(kappa, oracle, rtol=0, atol=1e-8 * oracle.abs().max().item() + 1e-12)
        dots = (info.directions.flatten(2) * info.normal.flatten(1)[:, None]).sum(-1)
        assert dots.abs().max() < 1e-12                          # principal directions are tangent
        torch.testing.assert_close(info.directions.flatten(2).norm(dim=-1), torch.ones(4, k, dtype=torch.float64))
        assert (info.residuals <= 1e-8 * oracle.abs().max() + 1e-12).all()
    torch.testing.assert_close(info_o.normal, unit_normal(f, x))


def test_shape_operator_is_symmetric_and_sees_no_normal():
    d = 20
    net = softplus_net(d, 3, beta=4.0)
    x = torch.randn(2, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = logit(net, 2)
    ops = shape_operator(f, x)
    rng = np.random.default_rng(0)
    for b, op in enumerate(ops):
        assert op.shape == (d - 1, d - 1) and op.dtype == np.float64
        u, v = rng.standard_normal(d - 1), rng.standard_normal(d - 1)
        assert abs(u @ op.matvec(v) - v @ op.matvec(u)) < 1e-12 * np.linalg.norm(op.matvec(u))
        dense = np.stack([op.matvec(e) for e in np.eye(d - 1)], axis=1)
        np.testing.assert_allclose(dense, dense.T, atol=1e-12)
        # its spectrum is that of P H P / |g| in R^d without the normal's eigenvalue 0 (eigvector n)
        h = hessian(f, x)[b]
        grad = HessianVectorProduct(f, x).gradient[b]
        n = grad / grad.norm()
        ambient, vecs = torch.linalg.eigh((torch.eye(d, dtype=torch.float64) - torch.outer(n, n)) @ h
                                          @ (torch.eye(d, dtype=torch.float64) - torch.outer(n, n)) / grad.norm())
        normal_index = int((vecs.T @ n).abs().argmax())
        tangent = np.delete(ambient.numpy(), normal_index)
        np.testing.assert_allclose(np.linalg.eigvalsh(dense), tangent, atol=1e-12)


@settings(deadline=None, max_examples=8)
@given(n=st.integers(2, 32), rank=st.integers(1, 32), k=st.integers(1, 6), seed=st.integers(0, 2**16),
       which=st.sampled_from(("LM", "LA", "SA")))
def test_batched_lanczos_on_low_rank_and_degenerate_matrices(n, rank, k, seed, which):
    """Exact invariant subspaces (low rank, repeated eigenvalues) force fresh Krylov blocks; with the whole
    space as subspace the results stay exact (a restarted single-vector run can miss a multiplicity)."""
    k, rank = min(k, n), min(rank, n)
    gen = torch.Generator().manual_seed(seed)
    q = torch.stack([random_orthogonal(n, gen) for _ in range(3)])
    eig = torch.zeros(3, n, dtype=torch.float64)
    eig[:, :rank] = torch.randint(-3, 4, (3, rank), generator=gen).double()   # many repeats
    a = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    res = batched_lanczos(lambda v: (a @ v[..., None])[..., 0], n, 3, k, which=which, tol=1e-12, subspace=n)
    key = {"LM": -eig.abs(), "LA": -eig, "SA": eig}[which]
    want = eig.gather(1, key.argsort(dim=1, stable=True)[:, :k])
    if which == "LM":   # +-v ties in magnitude: either sign is a correct answer
        res.values, want = res.values.abs(), want.abs()
    torch.testing.assert_close(res.values, want, rtol=0, atol=1e-10)
    rayleigh = torch.einsum("bkn,bnm,bkm->bk", res.vectors, a, res.vectors)
    vec_res = (a @ res.vectors.transpose(1, 2) - res.vectors.transpose(1, 2) * rayleigh[:, None]).norm(dim=1)
    assert vec_res.max() < 1e-9                          # the vectors are eigenvectors
    gram = res.vectors @ res.vectors.transpose(1, 2)
    torch.testing.assert_close(gram, torch.eye(k, dtype=torch.float64).expand(3, k, k))   # orthonormal


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # inside torch.func
def test_hvp_modes_agree_with_dense_hessian():
    d = 7
    net = softplus_net(d, 5)
    f = logit(net, torch.tensor([0, 2, 1]))
    x = torch.randn(3, d, dtype=torch.float64)
    h = hessian(f, x)
    v = torch.randn(3, 4, d, dtype=torch.float64)
    expected = torch.einsum("bij,bmj->bmi", h, v)
    for mode in ("reverse", "forward"):
        torch.testing.assert_close(hvp(f, x, v, mode=mode), expected)
        torch.testing.assert_close(hvp(f, x, v[:, 0], mode=mode), expected[:, 0])
    product = HessianVectorProduct(f, x)
    for j in range(4):
        torch.testing.assert_close(product(v[:, j]), expected[:, j])
    assert product.count == 4
    affine = HessianVectorProduct(lambda z: z.sum(1), x)
    assert affine(v[:, 0]).abs().max() == 0


def test_logit_selects_target_and_tiles_for_stacked_paths():
    net = softplus_net(5, 0)
    x = torch.randn(4, 5, dtype=torch.float64)
    out = net(x)
    f = logit(net)                                     # predicted class, fixed at the first call
    torch.testing.assert_close(f(x), out.max(1).values)
    stacked = torch.cat([x, x + 1])                   # a [T=2, B=4] path flattened
    torch.testing.assert_close(f(stacked)[4:], net(x + 1).gather(1, out.argmax(1, keepdim=True)).squeeze(1))
    torch.testing.assert_close(logit(net, 2)(x), out[:, 2])
    with pytest.raises(ValueError, match="multiple"):
        f(x[:3])


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[B\] scalars"):
        principal_curvatures(lambda z: z.sum(), x, k=2)
    with pytest.raises(ValueError, match="grad f = 0"):
        principal_curvatures(lambda z: (z ** 2).sum(1), torch.zeros(2, 5, dtype=torch.float64), k=2)
    with pytest.raises(ValueError, match="NaN"):
        principal_curvatures(lambda z: z.norm(dim=1), x.clone().index_fill_(1, torch.tensor([1]), float("nan")))
    with pytest.raises(ValueError, match="not finite"):
        principal_curvatures(lambda z: z.norm(dim=1) / 0 * 0, x, k=2)
    with pytest.raises(ValueError, match="k must be"):
        principal_curvatures(lambda z: z.norm(dim=1), x, k=5)
    with pytest.raises(ValueError, match="max_dense_dim"):
        principal_curvatures(lambda z: z.norm(dim=1), x, k=2, method="dense", max_dense_dim=4)
    with pytest.raises(ValueError, match="method"):
        principal_curvatures(lambda z: z.norm(dim=1), x, k=2, method="arnoldi")
    with pytest.raises(ValueError, match="does not depend on x"):
        principal_curvatures(lambda z: torch.ones(z.shape[0], dtype=z.dtype), x, k=2)


def test_curvature_command_writes_table_config_and_plot(tmp_path, monkeypatch):
    """The CLI on a tiny stand-in ReLU model (the zoo and datasets are patched out to stay fast)."""
    import csv
    import json

    from geomexpl import cli, data, nets

    torch.manual_seed(0)
    relu_net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    monkeypatch.setattr(nets, "pretrained", lambda arch, dataset, **kw: relu_net)
    images = torch.rand(10, 1, 4, 4)
    monkeypatch.setattr(data, "load", lambda name, split="test", **kw: (images, torch.arange(10) % 3))
    argv = ["curvature", "--arch", "mlp", "--dataset", "digits", "--n", "3", "--betas", "1", "4", "--k", "2",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    rows = list(csv.DictReader((tmp_path / "curvature.csv").open()))
    assert len(rows) == 3 * 2 * 2 and set(rows[0]) == {"image", "beta", "k", "kappa"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert {"seed", "versions", "device"} <= set(config) and len(config["options"]["images"]) == 3
    assert (tmp_path / "curvature_vs_beta.png").stat().st_size > 0
    first = {(r["image"], r["beta"], r["k"]): float(r["kappa"]) for r in rows}
    image = int(rows[0]["image"])
    twin_f = logit(nets.softplus_twin(relu_net, 4.0), torch.tensor(config["options"]["targets"]))
    kappa, _ = principal_curvatures(twin_f, images[config["options"]["images"]], k=2, method="dense")
    assert first[(str(image), "4.0", "1")] == pytest.approx(float(kappa[0, 0]), rel=1e-3)
    assert cli.main(argv + ["--betas", "1", "4", "8"]) == 0          # resumes: only beta 8 is computed
    assert len(list(csv.DictReader((tmp_path / "curvature.csv").open()))) == 3 * 3 * 2
