"""Results of the theory checks as data: ``CheckResult`` / ``SubCheck`` and the files written from them.

A run directory holds ``report.md`` (one section per check: what was measured, the numbers, PASS or
FAIL and why), ``results.json`` (the same as data), ``config.json`` (seed, versions, device) and one
folder per check with its CSV tables and PNG plots (paths recorded relative to the run directory).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class SubCheck:
    """One verified statement: what was measured, the numbers, the tolerance and the verdict."""

    name: str
    measured: str
    numbers: dict
    tolerance: float | None
    tolerance_rule: str
    passed: bool
    explanation: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass
class CheckResult:
    """All sub-checks of one check (e.g. ``theorem2``) plus its plots; passes iff every sub-check does."""

    name: str
    title: str
    summary: str
    subchecks: list[SubCheck]
    files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(sub.passed for sub in self.subchecks)

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts sharing their keys) as a CSV table; returns ``path``."""
    if not rows:
        raise ValueError(f"rows for {path.name} must not be empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({key: _plain(value) for key, value in row.items()} for row in rows)
    return path


def write_run(results: list[CheckResult], out_dir: Path, config: dict) -> None:
    """Write ``report.md``, ``results.json`` and ``config.json`` for the checks of one run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _dump_json(out_dir / "config.json", config)
    _dump_json(out_dir / "results.json", {
        "passed": all(result.passed for result in results),
        "checks": [{**asdict(result), "passed": result.passed} for result in results],
    })
    (out_dir / "report.md").write_text(_markdown(results, config))


def _markdown(results: list[CheckResult], config: dict) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in config["versions"].items())
    lines = ["# Theory checks", "",
             f"Seed {config['seed']}, {'quick' if config['quick'] else 'full'} mode, device "
             f"{config['device']}; {versions}.", ""]
    for note in config.get("notes", []):
        lines += [f"- {note}"]
    lines += ["", "| check | result |", "|---|---|"]
    lines += [f"| {result.name} | **{result.status}** |" for result in results]
    for result in results:
        lines += ["", f"## {result.name}: {result.title} — **{result.status}**", "", result.summary, ""]
        for sub in result.subchecks:
            lines += [f"### {sub.name} — **{sub.status}**", "", f"*Measured:* {sub.measured}", ""]
            tolerance = "none (measurement)" if sub.tolerance is None else _fmt(sub.tolerance)
            lines += [f"*Tolerance:* {tolerance}. {sub.tolerance_rule}", ""]
            lines += ["| quantity | value |", "|---|---|"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in sub.numbers.items()]
            lines += [""]
            if sub.explanation:
                lines += [sub.explanation, ""]
            lines += [f"Data: {', '.join(f'`{path}`' for path in sub.files)}", ""] if sub.files else []
        lines += [f"![{Path(path).stem}]({path})" for path in result.files if path.endswith(".png")]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(item) for item in value) + "]"
    return str(value)


def _plain(value):
    """numpy/torch scalars -> Python numbers (JSON/CSV friendly); non-finite floats -> strings."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _dump_json(path: Path, data) -> None:
    path.write_text(json.dumps(_plain(data), indent=2) + "\n")


def replace_check(out_dir: Path, result: CheckResult, config: dict) -> None:
    """Write ``result`` into the run at ``out_dir``: it replaces the check of its name (or is appended),
    the other checks' sections are kept; ``config`` is the config of a new run (no results.json yet)."""
    if (Path(out_dir) / "results.json").exists():
        results, config = read_run(out_dir)
        names = [r.name for r in results]
        results = [result if r.name == result.name else r for r in results] + \
                  ([] if result.name in names else [result])
        config = {**config, "checks": list(dict.fromkeys([*config.get("checks", names), result.name]))}
    else:
        results = [result]
    write_run(results, out_dir, config)


def read_run(out_dir: Path) -> tuple[list[CheckResult], dict]:
    """The results and config of a run written by :func:`write_run` (to rewrite its report with one check replaced)."""
    raw = json.loads((Path(out_dir) / "results.json").read_text())
    config = json.loads((Path(out_dir) / "config.json").read_text())
    results = []
    for check in raw["checks"]:
        subs = [SubCheck(**{k: v for k, v in sub.items() if k != "status"}) for sub in check["subchecks"]]
        results.append(CheckResult(**{**{k: v for k, v in check.items() if k != "passed"}, "subchecks": subs}))
    return results, config
