"""Geometry: principal curvatures by Lanczos against the dense Hessian, scaling with the input size,
the cost of a Hessian-vector product against an input gradient, and the two HVP variants.

Model: the zoo's digits VGG (``geomexpl.nets.pretrained('vgg', 'digits')``) as a softplus twin,
or a small stand-in CNN when the zoo is unavailable (the row names say which was used).
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from benchmarks.harness import Report, side_by_side
from geomexpl.geometry import HessianVectorProduct, gradient, hvp, logit, principal_curvatures

BENCH = "geometry"
BETA = 10.0


def _zoo_model() -> tuple[nn.Module, torch.Tensor, str]:
    try:
        from geomexpl import data
        from geomexpl.nets import pretrained, softplus_twin
        model = softplus_twin(pretrained("vgg", "digits", progress=False), BETA)
        images = data.load("digits", "test")[0][:8]
        return model, images, "zoo vgg"
    except (ImportError, AttributeError, FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"  zoo model unavailable ({err}); using the stand-in CNN")
        return _stand_in(), torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0)), "stand-in cnn"


def _stand_in() -> nn.Module:
    """A fully convolutional softplus CNN that accepts any input size (for the scaling in d)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.Softplus(BETA), nn.Conv2d(16, 16, 3, padding=1, stride=2),
        nn.Softplus(BETA), nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.Softplus(BETA),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval().requires_grad_(False)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _top5_against_dense(report: Report, model: nn.Module, x: torch.Tensor, name: str) -> None:
    target = model(x).argmax(1)
    f, f64 = logit(model, target), logit(copy.deepcopy(model).double(), target)
    _, dense_s = _timed(lambda: principal_curvatures(f, x, k=5, method="dense"))
    oracle = principal_curvatures(f64, x.double(), k=5, method="dense")[0]
    scale = float(oracle.abs().max())
    (kappa, info), lanczos_s = _timed(lambda: principal_curvatures(f, x, k=5, tol=1e-4))
    (kappa_t, info_t), torch_s = _timed(lambda: principal_curvatures(f, x, k=5, tol=1e-4, method="torch"))
    kappa64 = principal_curvatures(f64, x.double(), k=5, tol=1e-10)[0]
    d = x[0].numel()
    report.add(BENCH, f"{name}: d", d, "inputs")
    report.add(BENCH, f"{name}: |kappa_max| (beta={BETA:g})", scale, "1/input unit")
    report.add(BENCH, f"{name}: HVPs for top-5 curvatures, eigsh float32 tol 1e-4", float(info.n_hvp.max()),
               "HVPs", "<= 100", bool(info.n_hvp.max() <= 100))
    report.add(BENCH, f"{name}: HVPs for top-5, torch Lanczos float32 tol 1e-4", float(info_t.n_hvp.max()),
               "HVPs", "<= 100", bool(info_t.n_hvp.max() <= 100))
    err = float((kappa - oracle).abs().max()) / scale
    report.add(BENCH, f"{name}: rel. error top-5, eigsh float32 vs dense float64", err, "",
               "<= 1e-4", err <= 1e-4)
    err_t = float((kappa_t - oracle).abs().max()) / scale
    report.add(BENCH, f"{name}: rel. error top-5, torch Lanczos float32 vs dense float64", err_t, "",
               "<= 1e-4", err_t <= 1e-4)
    report.add(BENCH, f"{name}: rel. error top-5, eigsh float64 tol 1e-10 vs dense float64",
               float((kappa64 - oracle).abs().max()) / scale, "")
    report.add(BENCH, f"{name}: time dense / eigsh (top-5, one image)", dense_s / lanczos_s, "x")
    report.add(BENCH, f"{name}: time dense / torch Lanczos (top-5, one image)", dense_s / torch_s, "x")


def _hvp_cost(report: Report, model: nn.Module, images: torch.Tensor, name: str, repeats: int) -> None:
    for batch in (1, images.shape[0]):
        x = images[:batch]
        f = logit(model, model(x).argmax(1))
        product = HessianVectorProduct(f, x)
        v = torch.randn_like(x)
        times = side_by_side({
            "gradient": lambda: gradient(f, x),
            "hvp reused graph": lambda: product(v),
            "hvp with graph build": lambda: HessianVectorProduct(f, x)(v),
        }, repeats=repeats)
        ratio = times["hvp reused graph"] / times["gradient"]
        report.add(BENCH, f"{name}: one HVP (graph reused) / one input gradient, batch {batch}", ratio, "x",
                   "<= 3", ratio <= 3)
        report.add(BENCH, f"{name}: HVP with graph build / input gradient, batch {batch}",
                   times["hvp with graph build"] / times["gradient"], "x")
        report.add(BENCH, f"{name}: one HVP (graph reused), batch {batch}", 1e3 * times["hvp reused graph"], "ms")
    x = images[:1]
    f = logit(model, model(x).argmax(1))
    for m in (1, 16):
        vs = torch.randn(1, m, *x.shape[1:])
        try:
            times = side_by_side({"reverse": lambda: hvp(f, x, vs, mode="reverse"),
                                  "forward": lambda: hvp(f, x, vs, mode="forward")}, repeats=repeats)
        except Exception as err:  # torch.func may not trace every model (e.g. a TorchFunctionMode twin)
            print(f"  torch.func HVP failed on {name}: {type(err).__name__}: {err}")
            continue
        report.add(BENCH, f"{name}: {m} HVPs at one x, torch.func (jvp of grad, vmapped) / reused graph",
                   times["forward"] / times["reverse"], "x")


def _batched_lanczos(report: Report, model: nn.Module, images: torch.Tensor, name: str) -> None:
    f = logit(model, model(images).argmax(1))
    _, eigsh_s = _timed(lambda: principal_curvatures(f, images, k=5, tol=1e-4))
    _, torch_s = _timed(lambda: principal_curvatures(f, images, k=5, tol=1e-4, method="torch"))
    singles = 0.0
    for b in range(images.shape[0]):
        fb = logit(model, model(images[b:b + 1]).argmax(1))
        singles += _timed(lambda: principal_curvatures(fb, images[b:b + 1], k=5, tol=1e-4))[1]
    n = images.shape[0]
    report.add(BENCH, f"{name}: top-5 for {n} images, eigsh one by one / batched torch Lanczos",
               singles / torch_s, "x")
    report.add(BENCH, f"{name}: top-5 for {n} images, eigsh on the batch operator / batched torch Lanczos",
               eigsh_s / torch_s, "x")


def _scaling(report: Report, quick: bool) -> None:
    """Single timings per size (dense at d=4096 alone takes about a minute)."""
    sizes = (16, 32) if quick else (16, 32, 64)
    dense_limit = 32 if quick else 64
    rows = {}
    for size in sizes:
        model = _stand_in()
        x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(size))
        f = logit(model, model(x).argmax(1))
        (_, info), lanczos_s = _timed(lambda: principal_curvatures(f, x, k=5, tol=1e-4))
        dense_s = _timed(lambda: principal_curvatures(f, x, k=5, method="dense"))[1] if size <= dense_limit else None
        rows[size] = (lanczos_s, dense_s)
        report.add(BENCH, f"stand-in cnn d={size * size}: eigsh top-5 time", 1e3 * lanczos_s, "ms")
        report.add(BENCH, f"stand-in cnn d={size * size}: eigsh HVPs", float(info.n_hvp.max()), "HVPs")
        if dense_s is not None:
            report.add(BENCH, f"stand-in cnn d={size * size}: dense / eigsh time", dense_s / lanczos_s, "x")
    for small, big in zip(sizes[:-1], sizes[1:]):
        growth = rows[big][0] / rows[small][0]
        report.add(BENCH, f"stand-in cnn: eigsh time growth d={small ** 2} -> {big ** 2} (d x4)", growth, "x",
                   "<= ~4 (at most linear in d)", growth <= 4.5)
        if rows[big][1] is not None:
            report.add(BENCH, f"stand-in cnn: dense time growth d={small ** 2} -> {big ** 2} (d x4)",
                       rows[big][1] / rows[small][1], "x", "none (d HVPs + d^3 eigh)")


def run(report: Report, quick: bool) -> None:
    torch.manual_seed(0)
    repeats = 3 if quick else 10
    model, images, name = _zoo_model()
    _top5_against_dense(report, model, images[:1], name)
    _hvp_cost(report, model, images, name, repeats)
    _batched_lanczos(report, model, images[:4] if quick else images, name)
    _scaling(report, quick)
