"""Plumbing of every long run: device choice, the recorded environment, and resumable result tables.

Results are data (docs/design.md, principle 6): tidy CSV rows appended as they are produced and flushed to
disk, so an interrupted run keeps what it wrote and a re-run skips what is done; JSON files are
written atomically (temporary file, then rename).
"""
from __future__ import annotations

import csv
import json
import os
import platform
from pathlib import Path

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; otherwise the named device (checked to exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return device


def environment(seed: int, device: torch.device | str, **extra) -> dict:
    """Seed, device and the versions of the numerical stack, to store beside every result."""
    import matplotlib
    import numpy
    import scipy

    from geomexpl import __version__

    device = torch.device(device)
    return {
        "seed": seed,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "versions": {"geomexpl": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
                     "numpy": numpy.__version__, "scipy": scipy.__version__, "matplotlib": matplotlib.__version__},
        "platform": platform.platform(),
        **extra,
    }


def start_run(out: Path, options: dict, seed: int, device) -> None:
    """Write ``out/config.json`` (options, seed, versions, device), refusing a folder of another run.

    A folder whose config holds the same options is resumed; one with other options is refused, so
    results of different runs never mix and nothing written is overwritten.
    """
    path = Path(out) / "config.json"
    if path.is_file():
        stored = json.loads(path.read_text()).get("options")
        if stored != json.loads(json.dumps(options, default=_plain)):
            raise ValueError(f"{path.parent} holds a run with other options; choose another --out "
                             f"(stored {stored}, asked {options})")
    write_json(path, {"options": options, **environment(seed, device)})


def write_json(path: Path, data) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    os.replace(tmp, path)
    return path


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


class ResultTable:
    """A CSV file of result rows that grows row by row and survives interruption.

    ``done(key)`` tells whether a row with these key columns is already stored, so a resumed run
    skips it. A partial last line (the process was killed mid-write) is dropped on open.
    """

    def __init__(self, path: Path, key: tuple[str, ...]):
        self.path = Path(path)
        self.key = key
        self.rows: list[dict] = []
        if self.path.is_file():
            text = self.path.read_text()
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]
                self.path.write_text(text)
            self.rows = list(csv.DictReader(text.splitlines()))
        self._done = {self._key(r) for r in self.rows}

    def _key(self, row: dict) -> tuple[str, ...]:
        return tuple(str(row[k]) for k in self.key)

    def done(self, **key) -> bool:
        return self._key(key) in self._done

    def append(self, rows: list[dict]) -> None:
        """Append rows (same columns as the file), flushed and synced to disk."""
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fields = list(self.rows[0].keys()) if self.rows else list(rows[0].keys())
        new_file = not self.path.is_file() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="raise")
            if new_file:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        stored = [{k: str(v) for k, v in r.items()} for r in rows]
        self.rows.extend(stored)
        self._done.update(self._key(r) for r in stored)
