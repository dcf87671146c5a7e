"""Real-GPU checks (issue 19), skipped without CUDA (tests/conftest.py): CPU vs CUDA parity with
TF32 off, attacks of 20 steps per method family, the torch Lanczos against float64 eigvalsh,
geodesics, no host sync inside the attack and Lanczos loops (``set_sync_debug_mode('error')``),
and the CLI with ``--device cuda``. Run them with ``pytest -m gpu`` on a machine with a GPU."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geomexpl import data, nets
from geomexpl.attack import explanation_target, manipulate
from geomexpl.attack.engine import AttackConfig, Objective
from geomexpl.explain import METHODS, explain, fit_patterns, relevance_map
from geomexpl.geometry import HessianVectorProduct, geodesic_distance, hessian, logit, principal_curvatures
from geomexpl.geometry.lanczos import batched_lanczos
from geomexpl.numerics import exact_float32

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setting():
    model = nets.pretrained("vgg", "digits", progress=False)
    images = data.load("digits", "test")[0][:8]
    patterns = fit_patterns(model, data.load("digits", "train")[0][:256], cache=False)
    return model, images, patterns


def _both(model, *tensors):
    return (model, copy.deepcopy(model).cuda()), [(t, t.cuda()) for t in tensors]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_and_its_gradient_match_the_cpu(setting, method):
    model, images, patterns = setting
    options = {"patterns": patterns} if method.startswith("pattern") else {}
    goal = torch.rand(8, 32, 32, generator=torch.Generator().manual_seed(0))
    twin = nets.softplus_twin(model, 10.0)
    results = []
    with exact_float32():
        for device in ("cpu", "cuda"):
            net = copy.deepcopy(twin).to(device)
            x = images.to(device).requires_grad_(True)
            h = explain(net, x, method, 3, **{k: v.to(x) if hasattr(v, "to") else v for k, v in options.items()})
            loss = (relevance_map(h) - goal.to(device)).pow(2).sum()
            grad = torch.autograd.grad(loss, x)[0] if h.requires_grad else torch.zeros_like(x)
            results.append((h.detach().cpu(), grad.cpu()))
    (h_cpu, g_cpu), (h_gpu, g_gpu) = results
    torch.testing.assert_close(h_gpu, h_cpu, rtol=1e-4, atol=1e-5 * float(h_cpu.abs().max()))
    torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-3, atol=1e-4 * float(g_cpu.abs().max()) + 1e-12)


FAMILIES = {"gradient": ("gradient", {}), "lrp": ("lrp", {}), "pattern": ("pattern_attribution", {"patterns": 1}),
            "smoothgrad": ("gradient", {"smoothgrad": 4}), "beta_smoothing": ("gradient", {"smooth_beta": 0.8})}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_attack_20_steps_runs_on_the_gpu_and_moves_the_map(setting, family):
    model, images, patterns = setting
    method, options = FAMILIES[family]
    options = {k: patterns if k == "patterns" else v for k, v in options.items()}
    net = copy.deepcopy(model).cuda()
    x = images.cuda()
    goal = explanation_target(net, images.flip(0).cuda(), method, **options)
    result = manipulate(net, x, goal, method, steps=20, target=0,
                        generator=torch.Generator(device="cuda").manual_seed(0), **options)
    metrics = result.metrics()
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert result.losses["total"][-1].sum() < result.losses["total"][0].sum()


def test_attack_steps_make_no_host_sync(setting):
    model, images, _ = setting
    x = images.cuda()
    goal = explanation_target(model.cuda(), images.flip(0).cuda(), "gradient")
    cfg = AttackConfig(method="gradient", steps=20, lr=1e-3, w_expl=1.0, w_out=1.0, beta_growth=(10.0, 100.0))
    lo, hi = torch.tensor(0.0, device="cuda"), torch.tensor(1.0, device="cuda")
    objective = Objective(model, x, torch.zeros(8, dtype=torch.long, device="cuda"), goal, cfg, lo, hi, None)
    x_adv = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([x_adv], lr=1e-3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(20):
            (x_adv.grad,) = torch.autograd.grad(objective(x_adv, 10.0 + step)[2].sum(), x_adv)
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _small_twin():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))
    return nets.softplus_twin(net.eval().requires_grad_(False), 5.0)


def test_torch_lanczos_on_the_gpu_matches_float64_eigvalsh():
    twin = _small_twin()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    f_cpu = logit(copy.deepcopy(twin).double(), 0)
    oracle = torch.linalg.eigvalsh(hessian(f_cpu, x))
    f = logit(copy.deepcopy(twin).double().cuda(), 0)
    product = HessianVectorProduct(f, x.cuda())
    result = batched_lanczos(lambda v: product(v.view_as(product.x)).flatten(1), 64, 2, k=3, which="LA",
                             tol=1e-10, device="cuda")
    top = oracle.flip(1)[:, :3]
    torch.testing.assert_close(result.values.cpu().sort(1, descending=True).values, top, rtol=1e-6, atol=1e-8)
    kappa, _ = principal_curvatures(f, x.cuda(), k=3, method="torch", tol=1e-8)
    kappa_dense, _ = principal_curvatures(f_cpu, x, k=3, method="dense")
    torch.testing.assert_close(kappa.cpu(), kappa_dense, rtol=1e-5, atol=1e-8)


def test_torch_lanczos_loop_makes_no_host_sync():
    twin = _small_twin()
    f = logit(copy.deepcopy(twin).cuda(), 0)
    product = HessianVectorProduct(f, torch.rand(2, 1, 8, 8, device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batched_lanczos(lambda v: product(v.view_as(product.x)).flatten(1), 64, 2, k=3, tol=0.0, maxiter=20,
                        dtype=torch.float32, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_geodesic_on_the_gpu_matches_the_cpu():
    twin = _small_twin()
    x0, x1 = torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.rand(2, 1, 8, 8, dtype=torch.float64)
    lengths = []
    for device in ("cpu", "cuda"):
        f = logit(copy.deepcopy(twin).double().to(device), 0)
        lengths.append(geodesic_distance(f, x0.to(device), x1.to(device), n_points=9, iters=100).length.cpu())
    torch.testing.assert_close(lengths[1], lengths[0], rtol=1e-6, atol=1e-9)


def test_cli_attack_with_device_cuda(tmp_path):
    out = subprocess.run([sys.executable, "-m", "geomexpl", "attack", "--method", "gradient", "--n", "2",
                          "--batch-size", "2", "--steps", "5", "--device", "cuda", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"device": "cuda' in (tmp_path / "summary.json").read_text()
