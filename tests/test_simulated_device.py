"""The attack engine and the geometry on a simulated accelerator (issue 19), in CPU CI.

Tensors are fake and live on ``simdev``, a PrivateUse1 device registered from Python (see
``tests/simulated_device.py``): a CPU/device mix raises, and every host sync and cross-device copy
is counted. Per-step (per-iteration) counts are differences between two runs of different length,
so one-off work at the entry point (validation, moving data once) does not count.
"""
import copy

import pytest
import torch
from torch import nn

from geomexpl import data, nets
from geomexpl.attack import engine, manipulate
from geomexpl.explain import METHODS, explain, fit_patterns, relevance_map
from geomexpl.geometry import (curvature_constant, geodesic, geodesic_distance, logit, principal_curvatures,
                               project_to_level_set)
from simulated_device import simulated_device

ATTACKS = {  # name -> (method, options): the method families of issue 19
    "gradient": ("gradient", {}),
    "lrp": ("lrp", {}),
    "pattern_attribution": ("pattern_attribution", {"patterns": True}),
    "smoothgrad": ("gradient", {"smoothgrad": 2}),
    "beta_smoothing": ("gradient", {"smooth_beta": 0.8}),
}


@pytest.fixture(scope="module")
def setting():
    model = nets.pretrained("vgg", "digits", progress=False)  # conv + batch norm + max pooling
    images = data.load("digits", "test")[0][:3]
    patterns = fit_patterns(model, data.load("digits", "train")[0][:32], cache=False)
    return model, images, patterns


def _per_step(run, short: int, long: int) -> dict:
    """Counts per step: (counts of run(long) - counts of run(short)) / (long - short)."""
    tallies = []
    for n in (short, long):
        with simulated_device() as (device, counter):
            run(device, n)
            tallies.append(counter.tally.copy())
    return {k: (tallies[1][k] - tallies[0][k]) / (long - short) for k in ("sync", "upload", "download")}


def test_the_simulator_catches_a_mix_and_counts_syncs_and_copies():
    with simulated_device() as (device, counter):
        x = torch.rand(2, 3, device=device)
        with pytest.raises(RuntimeError, match="device"):
            x + torch.ones(2, 3)  # a CPU tensor in a device op
        _ = x * torch.tensor(2.0)  # a 0-dim CPU scalar is allowed, as on CUDA
        x.sum().item()
        bool((x > 0).any())
        x.cpu()
        torch.tensor([1.0, 2.0], device=device)
    assert counter.tally["sync"] == 3 and counter.tally["download"] == 1 and counter.tally["upload"] == 1


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_the_device(setting, method):
    model, images, patterns = setting
    options = {"patterns": patterns} if method.startswith("pattern") else {}
    net = copy.deepcopy(model)
    with simulated_device() as (device, counter):
        x = images.to(device).requires_grad_(True)
        h = explain(net.to(device), x, method, 1, **options)
        (g,) = torch.autograd.grad(relevance_map(h).pow(2).sum(), x) if h.requires_grad else (h,)
        assert h.device == device and g.device == device and h.shape == x.shape


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_step_makes_no_sync_and_no_upload(setting, name):
    model, images, patterns = setting
    method, options = ATTACKS[name]
    options = {k: patterns if v is True else v for k, v in options.items()}
    nets_ = {n: copy.deepcopy(model) for n in (1, 2)}

    def run(device, steps):
        x, target_map = images.to(device), torch.rand(3, 32, 32).to(device)
        manipulate(nets_[steps].to(device), x, target_map, method, steps=steps, target=0, **options)

    counts = _per_step(run, 1, 2)
    assert counts["sync"] <= 1 and counts["upload"] == 0 and counts["download"] == 0, counts


def test_the_budget_check_fails_on_a_checked_inner_path(setting, monkeypatch):
    """Negative control: the validated relevance_map (it reads a value) in the step is caught."""
    model, images, _ = setting
    monkeypatch.setattr(engine, "relevance_map_trusted", relevance_map)
    nets_ = {n: copy.deepcopy(model) for n in (1, 2)}

    def run(device, steps):
        manipulate(nets_[steps].to(device), images.to(device), torch.rand(3, 32, 32).to(device), "gradient",
                   steps=steps, target=0)

    assert _per_step(run, 1, 2)["sync"] >= 1


def _small_twin():
    torch.manual_seed(0)
    return nets.softplus_twin(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval().requires_grad_(False), 5.0)


def test_geodesic_iterations_read_nothing_between_convergence_tests(monkeypatch):
    """With the convergence test out of reach (check_every > iters) an iteration makes no sync and
    no copy, so a run makes at most one sync per ``check_every`` (8) iterations. (A fake value
    answers any convergence test with "converged", so the tests themselves are not counted here.)"""
    twin = _small_twin()
    x0, x1 = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)

    def per_iteration():
        nets_ = {n: copy.deepcopy(twin) for n in (8, 24)}  # moved to the device inside, once each

        def run(device, iters):
            f = logit(nets_[iters].to(device), 0)
            init = torch.stack([x0, (x0 + x1) / 2, x1]).to(device)
            geodesic_distance(f, x0.to(device), x1.to(device), init=init, iters=iters, rtol=0.0, check_every=100)
        return _per_step(run, 8, 24)

    counts = per_iteration()
    assert counts == {"sync": 0, "upload": 0, "download": 0}, counts
    # negative control: the checked projection (a read per Newton step) in the inner loop is seen
    monkeypatch.setattr(geodesic, "_newton", lambda f, x, c, steps: project_to_level_set(f, x, c, steps=steps))
    assert per_iteration()["sync"] >= 1


def test_curvature_constant_with_batch_norm_after_pooling_runs_on_the_device():
    """C~ (Frobenius) folds the BN scale into the pooling weight: both must live on the device."""
    twin = _small_twin()
    with simulated_device() as (device, _):
        curvature_constant(twin.to(device), (1, 8, 8))


def test_torch_lanczos_iterations_read_at_most_one_value_each():
    twin = _small_twin()
    x = torch.rand(2, 1, 8, 8)
    nets_ = {n: copy.deepcopy(twin) for n in (10, 20)}

    def run(device, iterations):
        f = logit(nets_[iterations].to(device), 0)
        principal_curvatures(f, x.to(device), k=3, method="torch", tol=0.0, maxiter=iterations)

    counts = _per_step(run, 10, 20)
    # one upload per step: the simulated device has no random generator of its own, so the solver's fresh
    # random vectors come from a CPU generator (geometry/lanczos.py); CUDA has one, and uploads nothing
    assert counts["sync"] <= 1 and counts["upload"] <= 1 and counts["download"] == 0, counts
