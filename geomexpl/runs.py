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
import shutil
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


def claim_run(out: Path, options: dict, *, overwrite: bool = False) -> bool:
    """The run-folder rule of every command; writes nothing. True when ``out`` holds this same run.

    ``out`` may be missing or empty (a new run), or hold a run whose ``config.json`` has the same
    options (resumed, or redone where a command has no steps). A folder holding another run is
    refused unless ``overwrite`` (then it is deleted); one holding files but no ``config.json`` is
    always refused, so --overwrite can never delete a folder that is not a run.
    Options should name the command and the device type (a resume on another device is refused).
    """
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    path = out / "config.json"
    if not path.is_file():  # never deleted, not even with --overwrite: it may be anything
        raise ValueError(f"{out} holds files but no run (no config.json); choose a new or empty --out")
    stored = json.loads(path.read_text())
    stored = stored.get("options") if isinstance(stored, dict) else None
    if stored == json.loads(json.dumps(options, default=_plain)):
        return True
    if not overwrite:
        raise ValueError(f"{out} holds a run with other options (stored {stored}, asked {options}); choose "
                         "another --out, or pass --overwrite to replace it")
    shutil.rmtree(out)
    return False


def start_run(out: Path, options: dict, seed: int, device, *, overwrite: bool = False) -> bool:
    """:func:`claim_run`, then write ``out/config.json`` (options, seed, versions, device).

    Call it after every input is validated, so that a run that fails validation writes nothing.
    ``options`` gain ``device_type``. Returns True when an earlier run with these options is resumed.
    """
    options = {**options, "device_type": torch.device(device).type}
    resumed = claim_run(out, options, overwrite=overwrite)
    write_json(Path(out) / "config.json", {"options": options, **environment(seed, device)})
    return resumed


def add_overwrite(parser) -> None:
    """The ``--overwrite`` option of every command that writes a run folder."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a --out folder that holds another run (default: refuse)")


def write_json(path: Path, data) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    os.replace(tmp, path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (same keys) as a CSV table, atomically (a table that is redone, not appended)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
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
