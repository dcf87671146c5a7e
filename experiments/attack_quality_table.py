"""The table of docs/attack_quality/README.md, made from the committed per-method runs there.

``python -m experiments.attack_quality_table [FOLDER]`` prints it: per method, the median of each
column with its bootstrap 95% interval and 10th-90th percentiles, and the verdict of the project's
rule (experiments/stats.py) on the manipulation claim (map PCC, image SSIM, class kept).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from experiments.stats import combine, describe, median_ci, rate_ci, verdict

FOLDER = Path(__file__).resolve().parents[1] / "docs" / "attack_quality"
METHODS = ("gradient", "grad_x_input", "integrated_gradients", "lrp", "guided_backprop", "pattern_attribution")
COLUMNS = (("map_pcc", "PCC(map, target)"), ("map_ssim", "SSIM(map, target)"), ("image_ssim", "SSIM(x_adv, x)"),
           ("image_mse", "MSE(x_adv, x)"))


def _column(rows: list[dict], name: str) -> np.ndarray:
    return np.array([float(r[name]) for r in rows])


def table(folder: Path = FOLDER) -> str:
    """The markdown table: one row per method folder under ``folder``."""
    lines = ["| method | N | steps / lr | " + " | ".join(label for _, label in COLUMNS) + " | class kept | verdict |",
             "|---" * (len(COLUMNS) + 5) + "|"]
    for method in (m for m in METHODS if (Path(folder) / m / "results.csv").is_file()):
        with (Path(folder) / method / "results.csv").open() as f:
            rows = list(csv.DictReader(f))
        options = json.loads((Path(folder) / method / "config.json").read_text())["options"]
        kept = rate_ci(_column(rows, "class_kept"))
        parts = [verdict(median_ci(_column(rows, "map_pcc")), "map_pcc"),
                 verdict(median_ci(_column(rows, "image_ssim")), "image_ssim"), verdict(kept, "class_kept")]
        cells = [method, str(len(rows)), f"{options['steps']} / {options['lr']:g}",
                 *(describe(_column(rows, c)) for c, _ in COLUMNS), str(kept), combine(parts)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER))
