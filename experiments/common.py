"""Shared plumbing of every study: registry, config and seeds, resumable tables, tasks, attack helpers, report.

A study is a module of this package with

* ``TITLE`` (one line) and ``config(quick) -> dict`` (its options; ``note`` says N, steps and how
  they differ from the paper),
* ``tasks(cfg) -> [{"task": key, ...}]``: independent pieces of work (e.g. one per method and
  batch of pairs), each JSON-plain so it can travel to a Ray worker,
* ``run_task(cfg, task, device, workdir) -> rows``: the work of one task, at least one tidy row,
* ``finish(run) -> claims``: figures from the table and the paper's claims checked against it.

:func:`run_study` writes ``OUT/<study>/config.json`` (options, seed, versions, device), appends each
finished task's rows to ``OUT/<study>/results.csv`` (a :class:`geomexpl.runs.ResultTable` keyed by
task) and skips the tasks already there, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import functools
import importlib
import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geomexpl import attack, data, metrics, nets, runs
from geomexpl.commands.attack import attack_pairs
from geomexpl.explain import METHODS
from experiments.executors import EXECUTORS

STUDIES = ("fig2_qualitative", "fig3_similarity", "fig4_beta_undo", "fig5_smoothed_attacks", "cost",
           "fig7_pixel_flipping", "supp_architectures", "supp_second_dataset", "supp_ghorbani",
           "supp_output_change", "orthogonality", "sixt_sanity", "photos")
PAPER_METHODS = ("gradient", "grad_x_input", "integrated_gradients", "lrp", "guided_backprop",
                 "pattern_attribution")
VERDICTS = ("agree", "partly", "disagree", "not run")


def study(name: str):
    """The module of study ``name``."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; available: {', '.join(STUDIES)}")
    return importlib.import_module(f"experiments.{name}")


def available(methods) -> tuple[list[str], list[str]]:
    """(methods registered in geomexpl.explain.METHODS, methods missing) in the given order."""
    return [m for m in methods if m in METHODS], [m for m in methods if m not in METHODS]


def task_seed(seed: int, key: str) -> int:
    """A per-task seed that depends only on the run's seed and the task key (not on execution order)."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % 2**31


def batches(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges splitting n items into batches of at most ``size``."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


# --- models, data and the attack, cached per process ------------------------------------------

@functools.lru_cache(maxsize=None)
def model(arch: str, dataset: str, device: str) -> torch.nn.Module:
    return nets.pretrained(arch, dataset, progress=False).to(device)


@functools.lru_cache(maxsize=None)
def images(dataset: str, split: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.load(dataset, split)
    return x.to(device), y.to(device)


def bounds(dataset: str) -> tuple[float, float]:
    spec = data.spec(dataset)
    return spec.lower, spec.upper


@functools.lru_cache(maxsize=None)
def method_options(method: str, arch: str, dataset: str, device: str) -> dict:
    """Options a method needs besides the model: PatternNet/PatternAttribution's patterns, fitted
    on the training set."""
    if method not in ("pattern_net", "pattern_attribution"):
        return {}
    from geomexpl.explain import fit_patterns

    return {"patterns": fit_patterns(model(arch, dataset, device), images(dataset, "train", device)[0])}


def pairs(dataset: str, n: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded (attacked, target) test-image index pairs of different classes (paper sec. 2.3)."""
    return attack_pairs(images(dataset, "test", device)[1].cpu(), n, seed)


def attack_batch(cfg: dict, method: str, start: int, stop: int, device, *, arch: str = "vgg",
                 dataset: str = "digits", steps: int | None = None, lr: float | None = None,
                 **attack_options) -> tuple[attack.AttackResult, list[dict]]:
    """Attack pairs ``start..stop-1`` of the run's seeded pairs with ``method``; the target is the
    (equally smoothed) map of the other image. Returns the result and its tidy rows."""
    dev = str(device)
    net, (x, _) = model(arch, dataset, dev), images(dataset, "test", dev)
    first, second = pairs(dataset, cfg["n"], cfg["seed"], dev)
    ids = list(range(start, stop))
    opts = method_options(method, arch, dataset, dev)
    smooth = {k: attack_options[k] for k in ("smooth_beta", "smoothgrad", "noise_level") if k in attack_options}
    target = attack.explanation_target(net, x[second[ids]], method, bounds=bounds(dataset),
                                       beta=smooth.get("smooth_beta"), smoothgrad=smooth.get("smoothgrad"),
                                       noise_level=smooth.get("noise_level", 0.2), **opts)
    steps = steps or cfg["steps"]
    table_lr = attack.preset(method, smoothgrad=bool(smooth.get("smoothgrad")),
                             smooth_beta=smooth.get("smooth_beta") is not None).lr
    lr = lr or table_lr * cfg.get("lr_scale", 1.0)
    result = attack.manipulate(net, x[first[ids]], target, method, steps=steps, lr=lr, bounds=bounds(dataset),
                               **attack_options, **opts)
    extra = {"image_pcc": metrics.pcc(result.x_adv, result.x), "map_pcc_before": metrics.pcc(result.map_x, target),
             "map_ssim_before": metrics.ssim(result.map_x, target)}
    extra = {k: v.detach().cpu().tolist() for k, v in extra.items()}
    rows = [{**row, **{k: v[i] for k, v in extra.items()}, "arch": arch, "dataset": dataset, "steps": steps,
             "lr": lr, "image_index": int(first[row["example"]]), "target_index": int(second[row["example"]])}
            for i, row in enumerate(result.table(offset=start))]
    return result, rows


ARCH_BETA_GROWTH = {"densenet": (30.0, 300.0)}  # supplement C.1: DenseNet needs a larger beta


def attack_tasks(cfg: dict, methods, archs=("vgg",), datasets=("digits",), variants=("plain",)) -> list[dict]:
    """One task per (architecture, dataset, method, variant, batch of pairs)."""
    return [{"task": f"{arch}/{dataset}/{method}/{variant}/{a}-{b}", "arch": arch, "dataset": dataset,
             "method": method, "variant": variant, "start": a, "stop": b}
            for arch in archs for dataset in datasets for method in methods for variant in variants
            for a, b in batches(cfg["n"], cfg["batch"])]


def variant_options(cfg: dict, variant: str, method: str, arch: str, dataset: str, device: str) -> dict:
    """Attack options of a variant: 'plain'; 'beta' (attack the beta=0.8-smoothed method, supplement
    D); 'smoothgrad' (attack SmoothGrad with cfg['sg_samples'] samples); 'logits' (keep the
    pre-activations constant with Table 2's output factor 10 instead of 1e6)."""
    opts: dict = {}
    if arch in ARCH_BETA_GROWTH and method != "lrp" and variant != "beta":
        opts["beta_growth"] = ARCH_BETA_GROWTH[arch]
    if variant == "beta":
        opts["smooth_beta"] = attack.SMOOTHING_BETA
    elif variant == "smoothgrad":
        opts.update(smoothgrad=cfg["sg_samples"], noise_level=cfg.get("noise_level", 0.2))
    elif variant == "logits":
        x = images(dataset, "test", device)[0]
        num_outputs = model(arch, dataset, device)(x[:1]).shape[1]
        w_expl, _ = attack.loss_weights(x[0, 0].numel(), num_outputs)
        opts.update(output="logits", weights=(w_expl, 10.0 * num_outputs / 1000))
    elif variant != "plain":
        raise ValueError(f"unknown attack variant {variant!r}")
    return opts


def run_attack_task(cfg: dict, task: dict, device, workdir: Path) -> list[dict]:
    """The task of :func:`attack_tasks`; with cfg['save_tensors'] the images and maps are kept for figures."""
    opts = variant_options(cfg, task["variant"], task["method"], task["arch"], task["dataset"], str(device))
    result, rows = attack_batch(cfg, task["method"], task["start"], task["stop"], device, arch=task["arch"],
                                dataset=task["dataset"], **opts)
    if cfg.get("save_tensors"):
        save_tensors(tensor_path(workdir, task), **{k: getattr(result, k) for k in
                                                     ("x", "x_adv", "map_x", "map_adv", "target_map")})
    return [{**row, "variant": task["variant"]} for row in rows]


def tensor_path(workdir: Path, task: dict) -> Path:
    return Path(workdir) / "tensors" / (task["task"].replace("/", "_") + ".pt")


def box_figure(run: "Run", panels, path: Path, group_key: str = "method", **where) -> Path:
    """One box plot per (column, label) of ``panels``, boxes grouped by ``group_key`` (paper Fig. 3)."""
    from matplotlib.figure import Figure

    from geomexpl.plot import box_plots

    fig = Figure(figsize=(3.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (column, label) in zip(axes, panels):
        groups = {g: run.values(column, **{group_key: g}, **where) for g in run.levels(group_key)}
        box_plots({g: v for g, v in groups.items() if v.size}, ax=ax, title=label)
    fig.savefig(path, dpi=110)
    return path


def save_tensors(path: Path, **tensors) -> Path:
    """Tensors for a figure, written atomically (so a killed task leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)
    tmp.replace(path)
    return path


# --- running a study --------------------------------------------------------------------------

@dataclass
class Run:
    """A study's finished run: its folder, options and the stored rows (values as strings)."""

    name: str
    out: Path
    cfg: dict
    rows: list[dict]

    def select(self, **where) -> list[dict]:
        return [r for r in self.rows if all(str(r[k]) == str(v) for k, v in where.items())]

    def values(self, column: str, **where) -> np.ndarray:
        """The column as floats, over the rows matching ``where``."""
        return np.array([float(r[column]) for r in self.select(**where)], dtype=float)

    def levels(self, column: str) -> list[str]:
        """Distinct values of a column in order of appearance."""
        return list(dict.fromkeys(r[column] for r in self.rows))

    def path(self, name: str) -> Path:
        return self.out / name


def execute(name: str, cfg: dict, workdir: str, device: str, task: dict) -> list[dict]:
    """Run one task of study ``name`` (seeded by the task key); the function every executor calls."""
    torch.manual_seed(task_seed(cfg["seed"], task["task"]))
    rows = study(name).run_task(cfg, task, runs.resolve_device(device), Path(workdir))
    if not rows:
        raise RuntimeError(f"task {task['task']!r} of {name} returned no rows")
    return rows


def run_study(name: str, out: Path, *, quick: bool = False, seed: int = 0, executor: str = "local",
              device: str = "auto") -> Run:
    """Run the pending tasks of study ``name`` under ``out/name`` and make its figures and claims."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {sorted(EXECUTORS)}, got {executor!r}")
    module = study(name)
    cfg = {"study": name, "quick": quick, "seed": seed, **module.config(quick)}
    workdir = Path(out) / name
    runs.start_run(workdir, cfg, seed, runs.resolve_device(device))
    table = runs.ResultTable(workdir / "results.csv", key=("task",))
    planned = module.tasks(cfg)
    pending = [t for t in planned if not table.done(task=t["task"])]

    def store(task: dict, rows: list[dict]) -> None:
        table.append([{"task": task["task"], **row} for row in rows])

    EXECUTORS[executor](functools.partial(execute, name, cfg, str(workdir), device), pending, store, desc=name)
    keys = {t["task"] for t in planned}  # rows of tasks no longer planned are kept on disk but not used
    run = Run(name, workdir, cfg, [r for r in table.rows if r["task"] in keys])
    runs.write_json(workdir / "claims.json", module.finish(run))
    return run


# --- claims and the report --------------------------------------------------------------------

def claim(statement: str, paper: str, ours: str, verdict: str, reason: str = "", figure: str | None = None) -> dict:
    """One paper claim checked against our numbers."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    return {"claim": statement, "paper": paper, "ours": ours, "verdict": verdict, "reason": reason, "figure": figure}


def spread(values) -> str:
    """'median [p10, p90] (n=..)' of finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return "n/a"
    p10, p50, p90 = np.percentile(v, [10, 50, 90])
    return f"{p50:.3g} [{p10:.3g}, {p90:.3g}] (n={v.size})"


def write_report(out: Path, names, path: Path) -> Path:
    """REPORT.md from the stored claims of the studies ``names`` under ``out``; figures are copied
    to ``report_figures/`` next to it."""
    path = Path(path)
    figures = path.parent / "report_figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Reproduction report", "",
             f"Generated by `python -m experiments ... --out {out}` from the result tables under `{out}` (each "
             "study's `results.csv`, `config.json` and `claims.json`); every number below is read from those tables. "
             "Setup: the papers use ImageNet VGG-16 (and ResNet-18, AlexNet, DenseNet-121, CIFAR-10) with 100 pairs "
             "and 1500 Adam steps per method; this run uses geomexpl's bundled 32x32 digits and faces zoo nets on a "
             "shared 2-core CPU, so N and the number of steps are much smaller (stated per study) and the learning "
             "rates of the supplement's tables are scaled up to make up for fewer steps. Verdicts: agree / partly / "
             "disagree with the paper's claim, with the reason for any difference. The papers show boxes, not "
             "thresholds; ours for 'agree' on a manipulation claim are: median PCC(h_adv, h_t) >= 0.7, median "
             "SSIM(x_adv, x) >= 0.8 and every class kept ('partly' when the PCC still rose by more than 0.1).",
             "", "VERDICTS", ""]
    tally = dict.fromkeys(VERDICTS, 0)
    for name in names:
        workdir = Path(out) / name
        if not (workdir / "claims.json").is_file():
            continue
        claims = json.loads((workdir / "claims.json").read_text())
        options = json.loads((workdir / "config.json").read_text())
        lines += [f"## {name}: {study(name).TITLE}", "",
                  f"Run: {options['options'].get('note', '')} Device: {options['device']}, seed {options['seed']}"
                  f"{', QUICK mode (not a real result)' if options['options'].get('quick') else ''}.", "",
                  "| claim | paper | ours | verdict | reason |", "|---|---|---|---|---|"]
        shown = []
        for c in claims:
            tally[c["verdict"]] += 1
            cells = [c["claim"], c["paper"], c["ours"], f"**{c['verdict']}**", c["reason"]]
            lines.append("| " + " | ".join(str(s).replace("|", "/").replace("\n", " ") for s in cells) + " |")
            if c.get("figure") and c["figure"] not in shown and (workdir / c["figure"]).is_file():
                shown.append(c["figure"])
        for fig in shown:
            target = figures / f"{name}__{fig}"
            shutil.copyfile(workdir / fig, target)
            lines += ["", f"![{name} {fig}](report_figures/{target.name})"]
        lines.append("")
    lines[lines.index("VERDICTS")] = "Claims checked: " + ", ".join(f"{v} {k}" for k, v in tally.items()) + "."
    path.write_text("\n".join(lines) + "\n")
    return path


def manipulation_claim(run: Run, label: str, figure: str, paper: str, **where) -> dict:
    """The paper's central claim for the rows matching ``where``: the map moves to the target (PCC)
    while the image and the class stay (SSIM(x_adv, x), class kept)."""
    after, before = run.values("map_pcc", **where), run.values("map_pcc_before", **where)
    image, kept = run.values("image_ssim", **where), run.values("class_kept", **where)
    moved = np.nanmedian(after) - np.nanmedian(before)
    short = [text for failed, text in (
        (np.nanmedian(after) < 0.7, f"the median map PCC stays below 0.7 after only "
                                    f"{int(run.values('steps', **where)[0])} steps (paper 1500-4000)"),
        (np.nanmedian(image) < 0.8, "the perturbation is visible (median SSIM(x_adv, x) < 0.8; the 2-3x learning "
                                    "rate used to make up for fewer steps moves the small images far)"),
        (kept.mean() < 1, "some classes changed")) if failed]
    verdict = "agree" if not short else "partly" if moved > 0.1 else "disagree"
    return claim(f"{label}: the map is manipulated towards the target, image and class stay", paper,
                 f"PCC(h_adv, h_t) {spread(after)}, before {np.nanmedian(before):.2f}; SSIM(h_adv, h_t) "
                 f"{spread(run.values('map_ssim', **where))}; SSIM(x_adv, x) {spread(image)}; class kept {kept.mean():.0%}",
                 verdict, "; ".join(short), figure)
