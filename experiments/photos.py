"""The Table-1 attack on natural RGB photos (issue 13): does the paper's regime appear at 64x64, and at 128x128?

The photo VGG (``nets.pretrained('vgg', 'photos')``, 64x64 RGB crops of 10 photographs) is attacked
with the Table-1 preset (1500 steps) for 'gradient', 'lrp' and 'guided_backprop', at the table's
learning rate and at that rate x 0.226: the reference code runs Adam on ImageNet-normalised pixels
(std about 0.226), so a Table-1 step moves a [0, 1] pixel about 4.4x less there. The photo VGG at
128x128 (the same crops, its own net) is attacked with 'gradient' alone, the same pairs and rates.
Reported: median map PCC, image MSE, L-inf and SSIM(x_adv, x) with bootstrap intervals, beside the
digits numbers of docs/attack_quality, and a colour-histogram baseline classifier beside the nets' test
accuracy.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from experiments.common import (attack_batch, batches, claim, load_run, manipulation_claim, save_tensors,
                                tensor_path)
from experiments.stats import median_ci, paired_difference, verdict
from geomexpl.attack import RATE_CONVENTIONS

TITLE = "Table-1 attack on 64x64 and 128x128 RGB photos (issue 13)"
EXTENDS = ("n", "note", "methods_128")  # options that add tasks (``--extend``)
METRICS = (("map_pcc", "PCC(h_adv, h_t)"), ("image_mse", "MSE(x_adv, x)"), ("linf", "L-inf(x_adv - x)"),
           ("image_ssim", "SSIM(x_adv, x)"))
DIGITS = Path(__file__).resolve().parents[1] / "docs" / "attack_quality"


def config(quick: bool) -> dict:
    methods = ["lrp", "gradient", "guided_backprop"]  # cheapest first
    if quick:
        return {"methods": methods[:1], "methods_128": ["gradient"], "n": 2, "batch": 2, "steps": 3,
                "save_tensors": True, "note": "quick: 2 pairs, 3 steps."}
    return {"methods": methods, "methods_128": ["gradient"], "n": 32, "batch": 4, "steps": 1500, "save_tensors": True,
            "note": "photo VGG (64x64 RGB; 'gradient' also on the 128x128 photo VGG, the same crops), N=32 seeded test "
                    "pairs of different photos, the Table-1 preset (1500 Adam steps) at the table's rate and x 0.226; "
                    "tasks of 4 pairs, ordered so every (method, rate) has pairs before any has more, the 128x128 "
                    "tasks last."}


def tasks(cfg: dict) -> list[dict]:
    """64x64 tasks keyed 'vgg/photos/...', 128x128 ones 'vgg/photos-128/...' (the key carries the size)."""
    return [{"task": f"vgg/{_data_key(size)}/{method}/{lr_name}/{a}-{b}", "method": method, "lr_name": lr_name,
             "size": size, "start": a, "stop": b}
            for size, methods in ((64, cfg["methods"]), (128, cfg.get("methods_128", [])))
            for a, b in batches(cfg["n"], cfg["batch"]) for method in methods for lr_name in RATE_CONVENTIONS]


def _data_key(size: int) -> str:
    return "photos" if size == 64 else f"photos-{size}"


def size_of(row: dict) -> int:
    """The input size of a stored row, read from its task key (the table has no size column)."""
    data_key = row["task"].split("/")[1]
    return int(data_key.partition("-")[2] or 64)


def run_task(cfg: dict, task: dict, device, workdir: Path) -> list[dict]:
    result, rows = attack_batch(cfg, task["method"], task["start"], task["stop"], device, dataset="photos",
                                size=task.get("size", 64), rate=task["lr_name"])  # 'unit': x 0.226
    if cfg.get("save_tensors"):
        save_tensors(tensor_path(workdir, task), **{k: getattr(result, k) for k in
                                                     ("x", "x_adv", "map_x", "map_adv", "target_map")})
    return [{**row, "lr_name": task["lr_name"]} for row in rows]


def colour_histogram_accuracy(size: int = 64, bins: int = 8) -> float:
    """Test accuracy of a logistic regression on joint RGB histograms (bins^3) of the photo crops:
    how far colour alone solves the task."""
    from sklearn.linear_model import LogisticRegression

    from geomexpl import data

    def features(split):
        x, y = data.load("photos", split, size)
        q = (x.clamp(0, 1 - 1e-6) * bins).long()
        index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
        hist = torch.stack([torch.bincount(i.flatten(), minlength=bins ** 3) for i in index]).double()
        return (hist / hist.sum(1, keepdim=True)).numpy(), y.numpy()

    (xtr, ytr), (xte, yte) = features("train"), features("test")
    clf = LogisticRegression(max_iter=5000, C=10.0).fit(xtr, ytr)
    return float((clf.predict(xte) == yte).mean())


def accuracy_rows() -> list[dict]:
    """The colour-histogram baseline and every bundled photo net's stored test accuracy."""
    from geomexpl.nets import weights

    rows = [{"classifier": "colour histogram (8^3 bins) + logistic regression", "size": size,
             "test_accuracy": colour_histogram_accuracy(size)} for size in (64, 128)]
    for path in sorted(weights.BUNDLED_DIR.glob("*-photos-*.pt")):
        meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
        rows.append({"classifier": f"zoo {meta['arch']} ({meta['epochs']} epochs, {meta['train_seconds']:.0f} s)",
                     "size": int(path.stem.rsplit("-", 1)[1]), "test_accuracy": meta["test_accuracy"]})
    return rows


def _with_sizes(run):
    """The run with each row's input size as a column ('size'), read from its task key."""
    for r in run.rows:
        r["size"] = str(size_of(r))
    return run


def summary_rows(run) -> list[dict]:
    rows = []
    run = _with_sizes(run)
    for size in run.levels("size"):
        for method in run.levels("method"):
            rows += [_summary(run, size=size, method=method, lr_name=lr_name) for lr_name in RATE_CONVENTIONS
                     if run.select(size=size, method=method, lr_name=lr_name)]
    return rows


def _summary(run, **where) -> dict:
    """Medians with bootstrap intervals of the rows matching ``where`` (size, method, lr_name)."""
    row = {**where, "size": int(where["size"]), "lr": float(run.values("lr", **where)[0]),
           "steps": int(run.values("steps", **where)[0]), "n": len(run.select(**where)),
           "class_kept": float(run.values("class_kept", **where).mean())}
    for column, _ in METRICS:
        ci = median_ci(run.values(column, **where))
        row[column], row[column + "_lo"], row[column + "_hi"] = ci.estimate, ci.low, ci.high
    return row


def digits_rows() -> list[dict]:
    """The digits numbers of docs/attack_quality (200 steps at 2x the Table-1 rate, N=32)."""
    rows = []
    for method in ("gradient", "lrp", "guided_backprop"):
        with open(DIGITS / method / "results.csv") as f:
            table = list(csv.DictReader(f))
        cfg = json.loads((DIGITS / method / "config.json").read_text())["options"]
        row = {"size": 32, "method": method, "lr_name": "digits", "lr": cfg["lr"], "steps": cfg["steps"],
               "n": len(table),
               "class_kept": float(np.mean([float(r["class_kept"]) for r in table]))}
        for column, _ in METRICS:
            ci = median_ci([float(r[column]) for r in table])
            row[column], row[column + "_lo"], row[column + "_hi"] = ci.estimate, ci.low, ci.high
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def figure(run, size: int = 64) -> str | None:
    """Figure-2 layout: the first finished pair of every (method, rate) at ``size``, one row each."""
    from geomexpl.plot import manipulation_figure

    parts, labels = [], []
    for task in tasks(run.cfg):
        path = tensor_path(run.out, task)
        if task["start"] == 0 and task["size"] == size and path.is_file():
            parts.append({k: v[:1] for k, v in torch.load(path, weights_only=True).items()})
            labels.append(f"{task['method']} ({task['lr_name']} rate)")
    if not parts:
        return None
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    fig = manipulation_figure(cat["x"], cat["map_x"], cat["target_map"], cat["x_adv"], cat["map_adv"])
    fig.suptitle("rows: " + "; ".join(labels), fontsize=7)
    name = "manipulation.png" if size == 64 else f"manipulation_{size}.png"
    fig.savefig(run.path(name), dpi=110)
    return name


def _cell(row: dict, column: str) -> str:
    if not np.isfinite(row[column + "_lo"]):
        return f"{row[column]:.3g} (no CI, n < 5)"
    return f"{row[column]:.3g} [{row[column + '_lo']:.3g}, {row[column + '_hi']:.3g}]"


def section(rows: list[dict], accuracy: list[dict]) -> str:
    """The report section: the results table (photos beside digits) and the accuracy table."""
    lines = ["| data | method | rate | steps | N | map PCC | image MSE | L-inf | SSIM(x_adv, x) | class kept |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        size = row["size"]
        data_name = ("digits 32x32 grey (docs/attack_quality)" if row["lr_name"] == "digits" else
                     f"photos {size}x{size} RGB")
        rate = f"{row['lr']:.3g}" + ("" if row["lr_name"] == "digits" else f" ({row['lr_name']})")
        lines.append(f"| {data_name} | {row['method']} | {rate} | {row['steps']} | {row['n']} | "
                     + " | ".join(_cell(row, c) for c, _ in METRICS) + f" | {row['class_kept']:.0%} |")
    if accuracy:
        lines += ["", "| classifier | size | test accuracy |", "|---|---|---|"]
        lines += [f"| {r['classifier']} | {r['size']} | {float(r['test_accuracy']):.1%} |" for r in accuracy]
    return "\n".join(lines) + "\n"


def report_table(run) -> str:
    """The report's table: photos beside digits (median map PCC, image MSE, L-inf, SSIM with intervals)
    and the stored classifier accuracies (accuracy.csv of a full run)."""
    path = run.path("accuracy.csv")
    accuracy = list(csv.DictReader(path.read_text().splitlines())) if path.is_file() else []
    return section(summary_rows(run) + digits_rows(), accuracy)


def figures(run) -> None:
    """summary.csv (photos and digits), accuracy.csv (full runs), tables.md and manipulation(_128).png."""
    rows = summary_rows(run) + digits_rows()
    write_csv(run.path("summary.csv"), rows)
    accuracy = []
    if not run.cfg["quick"]:  # the baseline fits a classifier on 960 histograms per size
        accuracy = accuracy_rows()
        write_csv(run.path("accuracy.csv"), accuracy)
    run.path("tables.md").write_text(section(rows, accuracy))
    for size in (64, 128):
        figure(run, size)


def size_claims(run) -> list[dict]:
    """Per method and rate run at 128x128: the paired difference PCC(128) - PCC(64) over the same pairs."""
    out = []
    for method in run.levels("method"):
        for rate in RATE_CONVENTIONS:
            by_size = {size: {r["example"]: float(r["map_pcc"]) for r in run.select(size=size, method=method,
                                                                                   lr_name=rate)}
                       for size in ("64", "128")}
            common = sorted(set(by_size["64"]) & set(by_size["128"]), key=int)
            if not common:
                continue
            diff = paired_difference([by_size["128"][e] for e in common], [by_size["64"][e] for e in common])
            out.append(claim(f"{method}, {rate} rate: the map follows the target at least as well at 128x128 as at "
                             "64x64 (the same pairs)", "ImageNet 224x224 (more pixels) is manipulable; no size claim",
                             f"paired median PCC(128) - PCC(64): {diff}", verdict(diff, "difference"),
                             "the 128x128 net is its own (half as wide), trained like the 64x64 one",
                             "manipulation_128.png"))
    return out


def claims(run) -> list[dict]:
    run = _with_sizes(run)
    paper = "Fig. 2-3: target emulated, perturbation hardly perceptible (ImageNet, 1500 steps)"
    return size_claims(run) + [
        manipulation_claim(run, f"photos {row['size']}x{row['size']}, {row['method']}, {row['lr_name']} rate "
                           f"{row['lr']:.3g}", "manipulation.png" if row["size"] == 64 else
                           f"manipulation_{row['size']}.png", paper, size=row["size"], method=row["method"],
                           lr_name=row["lr_name"])
        for row in summary_rows(run)]


def summarise_partial(out: Path):
    """Tables, figure and claims of the finished tasks of an interrupted run under ``out/photos``
    (``python -m experiments.photos OUT``); the run resumes with ``python -m experiments photos --out OUT``."""
    from geomexpl import runs

    run = load_run("photos", out)
    figures(run)
    runs.write_json(run.path("claims.json"), claims(run))
    return run


if __name__ == "__main__":
    import sys

    summarise_partial(Path(sys.argv[1]))
