"""Side-by-side timing: every case of a comparison is timed in the same run, interleaved.

The CPU is small and noisy, so only ratios measured together are reported (docs/design.md, principle 7).
Each benchmark module defines ``run(report, quick)``; ``python -m benchmarks`` runs them all and
writes ``benchmarks/results.json`` and ``benchmarks/results.md``.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


def _sync(device: str | None) -> None:
    if device and device.startswith("cuda"):
        torch.cuda.synchronize()


def side_by_side(cases: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                 device: str | None = None) -> dict[str, float]:
    """Median wall time in seconds of each case; rounds interleave the cases to share the noise."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


@dataclass
class Row:
    benchmark: str
    measure: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, benchmark: str, measure: str, value: float, unit: str,
            goal: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(benchmark, measure, float(value), unit, goal, met))

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
        payload = {"meta": meta, "rows": [r.__dict__ for r in self.rows]}
        (out_dir / "results.json").write_text(json.dumps(payload, indent=2))
        lines = [f"# Benchmarks\n\n{json.dumps(meta)}\n",
                 "| benchmark | measure | value | unit | goal | met |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            met = "" if r.met is None else ("yes" if r.met else "NO")
            lines.append(f"| {r.benchmark} | {r.measure} | {r.value:.4g} | {r.unit} | {r.goal} | {met} |")
        (out_dir / "results.md").write_text("\n".join(lines) + "\n")
