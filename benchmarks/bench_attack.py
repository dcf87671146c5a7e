"""Attack cost (issue 12): this engine against a baseline commit, side by side in one run.

Each engine runs in its own worker process (``benchmarks/attack_cases.py``; the baseline is the
commit ``BASELINE`` extracted with ``git archive``), one thread each, and the rounds interleave
every case of both engines, so both see the same machine load; values are medians over rounds.
A step's time is the median interval between successive Adam steps inside one attack call (the
workers wrap ``torch.optim.Adam.step``, so both engines are timed the same way, and the fixed cost
of a call, validation and the final evaluation, is left out). The denominator of every ratio is one input
gradient of the ReLU model the user passes, timed in the same worker (the softplus twin's gradient
is reported beside it).
Goals: step / input gradient <= 3 ('gradient') and <= 4 ('lrp') at batch 64 on the digits VGG and
at batch 1 on VGG-16 224x224 (random weights); per image, batch 64 >= 3x cheaper than batch 1;
an integrated-gradients step (30 points) <= 90 input gradients on VGG-16, with its peak memory.
Memory: resident-set peak of an attack call in a fresh process per case (``resource.getrusage``).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("attack_cases.py")
BASELINE = "5c5147b"


def _baseline_tree(ref: str) -> Path:
    """The baseline commit's files (``git archive``, no change to the repository's worktrees)."""
    out = Path(tempfile.gettempdir()) / f"geomexpl_baseline_{ref}"
    if not (out / "geomexpl").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
        tar = out / "tree.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as t:
            t.extractall(out, filter="data")
        tar.unlink()
    return out


class Worker:
    """A worker process importing geomexpl from ``tree``; ``time(case)`` runs a case once."""

    def __init__(self, tree: Path, device: str, threads: int):
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "--device", device, "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=tempfile.gettempdir())
        assert self.proc.stdout.readline().strip() == "ready", "attack worker failed to start"

    def time(self, case: str) -> float:
        self.proc.stdin.write(case + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"attack worker died on case {case!r}")
        return float(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _one_shot(tree: Path, device: str, threads: int, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, str(WORKER), "--device", device, "--threads", str(threads), *args],
                         capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _interleaved(workers: dict, cases: list[str], rounds: int, warmup: bool = True) -> dict:
    for worker in workers.values():  # warm-up: a full round, or the build and one gradient
        for case in cases if warmup else cases[:1]:
            worker.time(case)
    samples = {(engine, c): [] for engine in workers for c in cases}
    for _ in range(rounds):
        for case in cases:
            for engine, worker in workers.items():
                samples[engine, case].append(worker.time(case))
    return {key: statistics.median(v) for key, v in samples.items()}


PARTS = ("digits", "vgg16", "memory", "profile", "ig")


def run(report, quick: bool, device: str = "cpu", threads: int = 1, baseline: str = BASELINE,
        parts: tuple[str, ...] = PARTS, ig_chunks: tuple[int, ...] = (10,)) -> None:
    """The parts of the benchmark, each adding rows under benchmark 'attack <part>'."""
    trees = {"new": REPO, f"baseline {baseline}": _baseline_tree(baseline)}
    report.meta.update({"attack threads": threads, "attack device": device, "attack baseline": baseline})
    for family, rounds in (("digits", 3 if quick else 7), ("vgg16", 2)):
        if family not in parts or (quick and family == "vgg16"):
            continue
        batch = 64 if family == "digits" else 1
        cases = [f"{family} b{batch} input gradient (ReLU)", f"{family} b{batch} input gradient (twin)"]
        cases += [f"{family} b{n} {m} step" for m in ("gradient", "lrp") for n in ((64, 1) if family == "digits" else (1,))]
        workers = {name: Worker(tree, device, threads) for name, tree in trees.items()}
        try:
            t = _interleaved(workers, cases, rounds, warmup=family == "digits")
        finally:
            for w in workers.values():
                w.close()
        for engine in trees:
            _report_family(report, t, engine, family)
    if "memory" in parts:
        cases = [("digits", 1), ("digits", 64)] + ([] if quick else [("vgg16", 1)])
        for engine, tree in trees.items():
            for family, n in cases:
                m = _one_shot(tree, device, threads, "--memory", f"{family} b{n} gradient step")
                if "error" not in m:
                    report.add("attack memory", f"{engine}: {family} b{n} 'gradient' attack call, resident peak "
                               "per image above setup", (m["rss_peak_kb"] - m["rss_before_kb"]) / 1024 / n, "MiB")
    if "profile" in parts:
        for family in ("digits",) if quick else ("digits", "vgg16"):
            for method in ("gradient", "lrp"):
                _profile(report, device, threads, family, method, quick or family == "vgg16")
    if "ig" in parts and not quick:
        _integrated_gradients(report, device, threads, ig_chunks)


def _profile(report, device: str, threads: int, family: str, method: str, quick: bool) -> None:
    phases = _one_shot(REPO, device, threads, "--profile", family, method, *(("--quick",) if quick else ()))
    if "error" in phases:
        return
    grad = phases.pop("input gradient (ReLU)")
    batch = 64 if family == "digits" else 1
    for name in ("input gradient (twin, beta 30)", "input gradient (nn.Softplus modules, beta 30)"):
        report.add("attack profile", f"new: {family} b{batch} {name} / ReLU input gradient", phases.pop(name) / grad,
                   "x")
    for phase, seconds in phases.items():
        report.add("attack profile", f"new: {family} b{batch} '{method}' step, {phase}", seconds / grad,
                   "input gradients")


def _report_family(report, t: dict, engine: str, family: str) -> None:
    batch = 64 if family == "digits" else 1
    grad = t[engine, f"{family} b{batch} input gradient (ReLU)"]
    report.add(f"attack {family}", f"{engine}: {family} b{batch} input gradient, twin / ReLU",
               t[engine, f"{family} b{batch} input gradient (twin)"] / grad, "x")
    for method, goal in (("gradient", 3), ("lrp", 4)):
        ratio = t[engine, f"{family} b{batch} {method} step"] / grad
        report.add(f"attack {family}", f"{engine}: {family} b{batch} '{method}' step / ReLU input gradient", ratio, "x",
                   f"<= {goal}", ratio <= goal)
        if family == "digits":
            per_image = t[engine, f"digits b1 {method} step"] / (t[engine, f"digits b64 {method} step"] / 64)
            report.add("attack digits", f"{engine}: digits '{method}' step per image, batch 1 / batch 64", per_image, "x",
                       ">= 3", per_image >= 3)
            report.add("attack digits", f"{engine}: digits b64 '{method}' step time per image",
                       t[engine, f"digits b64 {method} step"] / 64 * 1e3, "ms")


def _integrated_gradients(report, device: str, threads: int, chunks: tuple[int, ...] = (10,)) -> None:
    for batch_size in chunks:  # the whole path (batch_size >= 30) needs ~9 GB: not run on the shared CPU
        label = f"chunks of {batch_size} points"
        r = _one_shot(REPO, device, threads, "--ig-batch-size", str(batch_size))
        if "error" in r:
            report.add("attack ig", f"new: vgg16 b1 IG (30 points, {label}) step FAILED: {r['error'][:80]}", 0, "")
            continue
        ratio = r["step_s"] / r["grad_s"]
        report.add("attack ig", f"new: vgg16 b1 IG (30 points, {label}) step / ReLU input gradient", ratio, "x",
                   "<= 90", ratio <= 90)
        report.add("attack ig", f"new: vgg16 b1 IG (30 points, {label}) resident peak of the process",
                   r["rss_peak_kb"] / 1024 ** 2, "GiB", "<= 4", r["rss_peak_kb"] / 1024 ** 2 <= 4)


def main() -> None:
    import argparse

    from benchmarks.harness import Report, Row

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_attack", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--ig-chunks", type=int, nargs="+", default=[10], help="IG path points per chunk")
    parser.add_argument("--stem", default="attack_results", help="file name (without suffix) of the results")
    parser.add_argument("--write-results", action="store_true",
                        help="update benchmarks/<stem>.{json,md} (committed): the rows of the parts "
                             "run now replace those of an earlier run, the other parts' rows are kept")
    args = parser.parse_args()
    report = Report()
    run(report, args.quick, args.device, args.threads, args.baseline, tuple(args.parts), tuple(args.ig_chunks))
    if args.write_results:
        out = Path(__file__).parent
        path = out / f"{args.stem}.json"
        kept = json.loads(path.read_text()) if path.exists() else {}
        done = {f"attack {p}" for p in args.parts}
        report.rows = [Row(**r) for r in kept.get("rows", []) if r["benchmark"] not in done] + report.rows
        report.meta = {**kept.get("meta", {}), **report.meta}
        report.write(out, stem=args.stem)
    print(report.markdown())


if __name__ == "__main__":
    main()
