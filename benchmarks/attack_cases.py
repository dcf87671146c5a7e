"""Timing worker for the attack benchmark: one engine (the geomexpl found on PYTHONPATH), one process.

Run by ``bench_attack`` twice, once with this checkout and once with a baseline checkout on
PYTHONPATH, so both engines run the same cases side by side. It only uses the public API that both
versions share. Protocol: a case name per line on stdin; each case times itself (median of repeated input
gradients, or the median interval between the Adam steps of one attack) and prints seconds.
``--memory CASE`` runs CASE once in a fresh process and prints the resident-set peak before and
after it (``resource.getrusage``), for a per-case memory measurement in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

REPEATS = 5  # input gradients timed per call (their median is the call's value)


def step_times(attack) -> float:
    """Median seconds of one attack step inside ``attack()``: the intervals between successive Adam
    steps (each spans projection, bookkeeping, the reference output, the explanation, the loss, the
    double backward and Adam). Engine-agnostic: it only wraps ``torch.optim.Adam.step``."""
    stamps: list[float] = []
    original = torch.optim.Adam.step

    def timed(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        _sync(_DEVICE[0])
        stamps.append(time.perf_counter())
        return out

    torch.optim.Adam.step = timed
    try:
        attack()
    finally:
        torch.optim.Adam.step = original
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def repeated(fn, n: int = REPEATS) -> float:
    """Median seconds of ``n`` calls of ``fn``."""
    times = []
    for _ in range(n):
        _sync(_DEVICE[0])
        start = time.perf_counter()
        fn()
        _sync(_DEVICE[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_DEVICE = ["cpu"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_cases(device: str, quick: bool) -> dict:
    """Case name -> callable, built lazily per family (VGG-16 at 224 costs seconds to build)."""
    from geomexpl import data, nets
    from geomexpl.attack import explanation_target, manipulate
    from geomexpl.explain import explain

    cases: dict = {}
    model = nets.pretrained("vgg", "digits", progress=False).to(device)
    images = data.load("digits", "test")[0].to(device)
    x, goal = images[:64], explanation_target(model, images[64:128], "gradient")
    twin = nets.softplus_twin(model, 30.0)

    def attack(net, x, goal, method, steps):
        return lambda: step_times(lambda: manipulate(net, x, goal, method, steps=steps, target=0))

    cases["digits b64 input gradient (ReLU)"] = lambda: repeated(lambda: explain(model, x, "gradient", target=0))
    cases["digits b64 input gradient (twin)"] = lambda: repeated(lambda: explain(twin, x, "gradient", target=0))
    for method in ("gradient", "lrp"):
        for n in (64, 1):
            cases[f"digits b{n} {method} step"] = attack(model, x[:n], goal[:n], method, 8 if n == 64 else 16)

    def vgg16():
        torch.manual_seed(0)
        net = nets.torchvision_like("vgg16").requires_grad_(False).to(device)
        z = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
        target_map = torch.rand(1, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
        return net, z, target_map

    cache: dict = {}

    def v16(fn):
        def call():
            if "net" not in cache:
                cache["net"], cache["x"], cache["map"] = vgg16()
            return fn(cache["net"], cache["x"], cache["map"])
        return call

    cases["vgg16 build"] = v16(lambda n, z, m: None)
    cases["vgg16 b1 input gradient (ReLU)"] = v16(lambda n, z, m: repeated(
        lambda: explain(n, z, "gradient", target=0), 3))
    cases["vgg16 b1 input gradient (twin)"] = v16(lambda n, z, m: repeated(
        lambda: explain(nets.softplus_twin(n, 30.0), z, "gradient", target=0), 3))
    for method in ("gradient", "lrp"):
        cases[f"vgg16 b1 {method} step"] = v16(lambda n, z, m, method=method: step_times(
            lambda: manipulate(n, z, m, method, steps=4, target=0)))
    return cases


def ig_step(device: str, batch_size: int) -> dict:
    """One attack step with integrated gradients (30 points) on VGG-16 224 (this checkout's engine):
    seconds of the step and of one ReLU input gradient, and the resident-set peak around the step."""
    from geomexpl import nets
    from geomexpl.attack.engine import AttackConfig, Objective
    from geomexpl.explain import explain

    torch.manual_seed(0)
    net = nets.torchvision_like("vgg16").requires_grad_(False).to(device)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    goal = torch.rand(1, 224, 224).to(device)
    cfg = AttackConfig(method="integrated_gradients", steps=1, lr=5e-3, w_expl=1e11, w_out=1e6,
                       beta_growth=(10.0, 10.0), method_options={"steps": 30, "batch_size": batch_size})
    lo, hi = torch.tensor(0.0, device=device), torch.tensor(1.0, device=device)
    objective = Objective(net, x, torch.zeros(1, dtype=torch.long, device=device), goal, cfg, lo, hi, None)
    explain(net, x, "gradient", target=0)
    _sync(device)
    start = time.perf_counter()
    explain(net, x, "gradient", target=0)
    _sync(device)
    grad_s = time.perf_counter() - start
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x_adv = x.clone().requires_grad_(True)
    start = time.perf_counter()
    torch.autograd.grad(objective(x_adv, 10.0)[2].sum(), x_adv)
    _sync(device)
    step_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda_peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"step_s": step_s, "grad_s": grad_s, "rss_before_kb": before, "rss_peak_kb": peak,
            "cuda_peak_bytes": cuda_peak}


def _softplus_modules(net, beta: float):
    """A copy of ``net`` with every nn.ReLU module replaced by nn.Softplus(beta): the twin's arithmetic
    without its TorchFunctionMode dispatch (valid for nets whose ReLUs are all modules)."""
    import copy

    from torch import nn

    out = copy.deepcopy(net)
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, nn.Softplus(beta, threshold=20.0))
    return out


def profile_step(device: str, family: str, method: str, rounds: int) -> dict:
    """Median seconds of the phases of one attack step (this checkout's engine), and of one ReLU input
    gradient: reference forward, explanation (its forward and graph-keeping backward), loss and
    double backward, optimiser, projection."""
    from geomexpl import data, nets
    from geomexpl.attack.engine import AttackConfig, Objective, _project
    from geomexpl.explain import explain

    if family == "digits":
        net = nets.pretrained("vgg", "digits", progress=False).to(device)
        x = data.load("digits", "test")[0][:64].to(device)
        goal = torch.rand(64, 32, 32).to(device)
    else:
        torch.manual_seed(0)
        net = nets.torchvision_like("vgg16").requires_grad_(False).to(device)
        x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
        goal = torch.rand(1, 224, 224).to(device)
    growth = None if method == "lrp" else (10.0, 100.0)
    cfg = AttackConfig(method=method, steps=1, lr=1e-3, w_expl=1.0, w_out=1.0, beta_growth=growth)
    lo, hi = torch.tensor(0.0, device=device), torch.tensor(1.0, device=device)
    target = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    objective = Objective(net, x, target, goal, cfg, lo, hi, None)
    beta = None if growth is None else 30.0
    x_adv = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([x_adv], lr=1e-3)
    surrogate = nets.softplus_twin(objective.net, beta)
    state: dict = {}

    def reference():
        with torch.no_grad():
            surrogate(x).softmax(1)

    def loss():
        state["loss"] = objective(x_adv, beta)[2].sum()

    def backward():
        (x_adv.grad,) = torch.autograd.grad(state["loss"], x_adv)

    def project():
        with torch.no_grad():
            _project(x_adv, x, lo, hi, None, None)

    swapped = _softplus_modules(net, 30.0)
    twin = nets.softplus_twin(net, 30.0)
    phases = {"input gradient (ReLU)": lambda: explain(net, x, "gradient", target=0),
              "input gradient (twin, beta 30)": lambda: explain(twin, x, "gradient", target=0),
              "input gradient (nn.Softplus modules, beta 30)": lambda: explain(swapped, x, "gradient", target=0),
              "reference forward": reference, "objective (reference + explanation + loss)": loss,
              "double backward": backward, "optimiser": opt.step, "projection": project}
    samples: dict = {k: [] for k in phases}
    for r in range(rounds + 1):
        for name, fn in phases.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if r:
                samples[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in samples.items()}
    if growth is None:  # fixed surrogate: the engine computes the reference once, not per step
        med["objective (reference + explanation + loss)"] += med["reference forward"]
        med["reference forward"] = 0.0
    med["explanation + loss"] = med.pop("objective (reference + explanation + loss)") - med["reference forward"]
    return med


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory", help="run this case once and print the resident-set peak")
    parser.add_argument("--ig-batch-size", type=int, help="time one IG attack step (this checkout only)")
    parser.add_argument("--profile", nargs=2, metavar=("FAMILY", "METHOD"),
                        help="phases of one attack step (this checkout only): digits|vgg16, gradient|lrp")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _DEVICE[0] = args.device
    if args.profile:
        rounds = 1 if args.profile[0] == "vgg16" else 2 if args.quick else 5
        print(json.dumps(profile_step(args.device, *args.profile, rounds=rounds)), flush=True)
        return
    if args.ig_batch_size:
        print(json.dumps(ig_step(args.device, args.ig_batch_size)), flush=True)
        return
    cases = build_cases(args.device, args.quick)
    if args.memory:
        if args.memory.startswith("vgg16"):
            cases["vgg16 build"]()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cases[args.memory]()
        _sync(args.device)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cuda = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
        print(json.dumps({"rss_before_kb": before, "rss_peak_kb": peak, "cuda_peak_bytes": cuda}), flush=True)
        return
    print("ready", flush=True)
    for line in sys.stdin:
        print(cases[line.strip()](), flush=True)


if __name__ == "__main__":
    main()
