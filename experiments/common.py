"""Shared plumbing of every study: registry, config and seeds, resumable tables, tasks, attack helpers, report.

A study is a module of this package with

* ``TITLE`` (one line) and ``config(quick) -> dict`` (its options; ``note`` says N, steps and how
  they differ from the paper),
* ``tasks(cfg) -> [{"task": key, ...}]``: independent pieces of work (e.g. one per method and
  batch of pairs), each JSON-plain so it can travel to a Ray worker,
* ``run_task(cfg, task, device, workdir) -> rows``: the work of one task, at least one tidy row,
* ``figures(run)``: the study's figures from its table (and any tensors it kept),
* ``claims(run) -> [claim]``: the paper's claims checked against the table alone, by the verdict
  rule of :mod:`experiments.stats` (so the report can be re-derived from the committed tables),
* optionally ``report_table(run) -> str``: a markdown table the report shows beside the claims.

:func:`run_study` writes ``OUT/<study>/config.json`` (options, seed, versions, device), appends each
finished task's rows to ``OUT/<study>/results.csv`` (a :class:`geomexpl.runs.ResultTable` keyed by
task) and skips the tasks already there, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import functools
import importlib
import json
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geomexpl import attack, data, metrics, nets, runs
from geomexpl.commands.attack import attack_pairs
from geomexpl.explain import METHODS
from experiments.executors import EXECUTORS
from experiments.stats import VERDICTS, combine, describe, median_ci, rate_ci, rule_text, verdict

STUDIES = ("fig2_qualitative", "fig3_similarity", "fig4_beta_undo", "fig5_smoothed_attacks", "cost",
           "fig7_pixel_flipping", "supp_architectures", "supp_second_dataset", "supp_ghorbani",
           "supp_output_change", "orthogonality", "sixt_sanity", "photos", "perceptibility", "depth", "robust_sweep")
PAPER_METHODS = ("gradient", "grad_x_input", "integrated_gradients", "lrp", "guided_backprop",
                 "pattern_attribution")


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
def model(arch: str, dataset: str, device: str, size: int | None = None) -> torch.nn.Module:
    return nets.pretrained(arch, dataset, progress=False, size=size).to(device)


@functools.lru_cache(maxsize=None)
def images(dataset: str, split: str, device: str, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.load(dataset, split, size)
    return x.to(device), y.to(device)


def bounds(dataset: str) -> tuple[float, float]:
    spec = data.spec(dataset)
    return spec.lower, spec.upper


@functools.lru_cache(maxsize=None)
def method_options(method: str, arch: str, dataset: str, device: str, size: int | None = None) -> dict:
    """Options a method needs besides the model: PatternNet/PatternAttribution's patterns, fitted
    on the training set."""
    if method not in ("pattern_net", "pattern_attribution"):
        return {}
    from geomexpl.explain import fit_patterns

    return {"patterns": fit_patterns(model(arch, dataset, device, size), images(dataset, "train", device, size)[0])}


def pairs(dataset: str, n: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded (attacked, target) test-image index pairs of different classes (paper sec. 2.3)."""
    return attack_pairs(images(dataset, "test", device)[1].cpu(), n, seed)


def top_curvature(cfg: dict, net: torch.nn.Module, beta: float, device: str, dataset: str = "digits"):
    """(|kappa_max| [K], CurvatureInfo) of the softplus_beta twin of ``net`` at the first
    ``cfg['kappa_images']`` attacked images of the run's pairs, on the level set of the class ``net``
    predicts there (batched torch Lanczos, relative tolerance 1e-4)."""
    from geomexpl.geometry import logit, principal_curvatures

    first, _ = pairs(dataset, cfg["n"], cfg["seed"], device)
    x = images(dataset, "test", device)[0][first[: cfg["kappa_images"]]]
    with torch.no_grad():
        classes = net(x).argmax(1)
    kappa, info = principal_curvatures(logit(nets.softplus_twin(net, beta), classes), x, k=1, method="torch", tol=1e-4)
    return kappa[:, 0].abs(), info


def attack_batch(cfg: dict, method: str, start: int, stop: int, device, *, arch: str = "vgg",
                 dataset: str = "digits", size: int | None = None, steps: int | None = None,
                 lr: float | None = None, preset: attack.Preset | None = None, rate: str | None = None,
                 net: torch.nn.Module | None = None, **attack_options) -> tuple[attack.AttackResult, list[dict]]:
    """Attack pairs ``start..stop-1`` of the run's seeded pairs with ``method``; the target is the
    (equally smoothed) map of the other image. Returns the result and its tidy rows.

    Left-out options come from ``preset`` (default: the method's row of Table 1, 4 or 5): its steps
    unless ``cfg['steps']`` is set, its rate in the convention ``cfg['rate']`` ('table' as printed,
    'unit' x 0.226 for [0, 1] pixels; see geomexpl.attack.presets; ``rate`` overrides it) times
    ``cfg['lr_scale']``. ``net``: a model of the study's own instead of the zoo net ``arch``."""
    dev = str(device)
    x = images(dataset, "test", dev, size)[0]
    first, second = pairs(dataset, cfg["n"], cfg["seed"], dev)
    ids = list(range(start, stop))
    if net is not None and method in ("pattern_net", "pattern_attribution"):
        raise ValueError(f"{method} needs patterns fitted on the zoo net; attack_batch fits none for a given net")
    net = model(arch, dataset, dev, size) if net is None else net
    opts = method_options(method, arch, dataset, dev, size)
    smooth = {k: attack_options[k] for k in ("smooth_beta", "smoothgrad", "noise_level") if k in attack_options}
    target = attack.explanation_target(net, x[second[ids]], method, bounds=bounds(dataset),
                                       beta=smooth.get("smooth_beta"), smoothgrad=smooth.get("smoothgrad"),
                                       noise_level=smooth.get("noise_level", 0.2), **opts)
    row = preset or attack.preset(method, smoothgrad=bool(smooth.get("smoothgrad")),
                                  smooth_beta=smooth.get("smooth_beta") is not None)
    steps = steps or cfg.get("steps") or row.steps
    lr = lr or row.rate(rate or cfg.get("rate", "table")) * cfg.get("lr_scale", 1.0)
    result = attack.manipulate(net, x[first[ids]], target, method, steps=steps, lr=lr, bounds=bounds(dataset),
                               preset=row, **attack_options, **opts)
    extra = {"image_pcc": metrics.pcc(result.x_adv, result.x), "map_pcc_before": metrics.pcc(result.map_x, target),
             "map_ssim_before": metrics.ssim(result.map_x, target)}
    extra = {k: v.detach().cpu().tolist() for k, v in extra.items()}
    rows = [{**row, **{k: v[i] for k, v in extra.items()}, "arch": arch, "dataset": dataset, "steps": steps,
             "lr": lr, "image_index": int(first[row["example"]]), "target_index": int(second[row["example"]])}
            for i, row in enumerate(result.table(offset=start))]
    return result, rows


def attack_tasks(cfg: dict, methods, archs=("vgg",), datasets=("digits",), variants=("plain",)) -> list[dict]:
    """One task per (architecture, dataset, method, variant, batch of pairs)."""
    return [{"task": f"{arch}/{dataset}/{method}/{variant}/{a}-{b}", "arch": arch, "dataset": dataset,
             "method": method, "variant": variant, "start": a, "stop": b}
            for arch in archs for dataset in datasets for method in methods for variant in variants
            for a, b in batches(cfg["n"], cfg["batch"])]


def variant_options(cfg: dict, variant: str, method: str, arch: str) -> dict:
    """Attack options of a variant: 'plain'; 'beta' (attack the beta=0.8-smoothed method, supplement
    D); 'smoothgrad' (attack SmoothGrad with cfg['sg_samples'] samples); 'logits' (keep the
    pre-activations constant with Table 2's output factor 10 instead of 1e6); 'table2' (Table 2's
    row of ``arch``); 'table3' (Table 3's row where it has the method, else the plain one)."""
    opts: dict = {}
    if arch in attack.presets.ARCH_BETA_GROWTH and method != "lrp" and variant != "beta":
        opts["beta_growth"] = attack.presets.ARCH_BETA_GROWTH[arch]
    if variant == "beta":
        opts["smooth_beta"] = attack.SMOOTHING_BETA
    elif variant == "smoothgrad":
        opts.update(smoothgrad=cfg["sg_samples"], noise_level=cfg.get("noise_level", 0.2))
    elif variant == "logits":
        row, table2 = attack.preset(method), attack.presets.TABLE2["vgg"]
        opts["preset"] = row.with_(factors=(row.factors[0], table2.factors[1]), output=table2.output)
    elif variant == "table2":
        opts["preset"] = attack.preset(method, table=2, arch=arch)
    elif variant == "table3":
        if method in attack.presets.TABLE3:
            opts["preset"] = attack.preset(method, table=3)
    elif variant != "plain":
        raise ValueError(f"unknown attack variant {variant!r}")
    return opts


def run_attack_task(cfg: dict, task: dict, device, workdir: Path) -> list[dict]:
    """The task of :func:`attack_tasks`; with cfg['save_tensors'] the images and maps are kept for figures."""
    opts = variant_options(cfg, task["variant"], task["method"], task["arch"])
    result, rows = attack_batch(cfg, task["method"], task["start"], task["stop"], device, arch=task["arch"],
                                dataset=task["dataset"], rate=task.get("rate"), **opts)
    if cfg.get("save_tensors"):
        save_tensors(tensor_path(workdir, task), **{k: getattr(result, k) for k in
                                                     ("x", "x_adv", "map_x", "map_adv", "target_map")})
    by_rate = {"rate": task["rate"]} if "rate" in task else {}  # tasks of a study that runs both conventions
    return [{**row, "variant": task["variant"], **by_rate} for row in rows]


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
    sizes = sorted({run.values(panels[0][0], **{group_key: g}, **where).size for g in run.levels(group_key)})
    fig.suptitle(f"box: 25th-75th percentile, whiskers: 10th-90th percentile, line: median; "
                 f"N={'/'.join(map(str, sizes))} per box", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
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
    start = time.perf_counter()
    rows = study(name).run_task(cfg, task, runs.resolve_device(device), Path(workdir))
    if not rows:
        raise RuntimeError(f"task {task['task']!r} of {name} returned no rows")
    seconds = time.perf_counter() - start  # the task's wall time, stored on each of its rows
    return [{**row, "task_seconds": seconds} for row in rows]


def run_study(name: str, out: Path, *, quick: bool = False, seed: int = 0, executor: str = "local",
              device: str = "auto", overwrite: bool = False, extend: bool = False) -> Run:
    """Run the pending tasks of study ``name`` under ``out/name`` and make its figures and claims.

    ``extend``: a stored run whose options differ only in the study's ``EXTENDS`` keys (default 'n'
    and 'note': options that add tasks without changing finished ones) takes the new options and
    keeps its finished tasks."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {sorted(EXECUTORS)}, got {executor!r}")
    module = study(name)
    cfg = {"study": name, "quick": quick, "seed": seed, **module.config(quick)}
    workdir = Path(out) / name
    resolved = runs.resolve_device(device)
    if extend:
        extend_run(workdir, {"command": "experiments", **cfg, "device_type": resolved.type},
                   getattr(module, "EXTENDS", ("n", "note")))
    runs.start_run(workdir, {"command": "experiments", **cfg}, seed, resolved, overwrite=overwrite)
    table = runs.ResultTable(workdir / "results.csv", key=("task",))
    planned = module.tasks(cfg)
    pending = [t for t in planned if not table.done(task=t["task"])]

    def store(task: dict, rows: list[dict]) -> None:
        table.append([{"task": task["task"], **row} for row in rows])

    EXECUTORS[executor](functools.partial(execute, name, cfg, str(workdir), device), pending, store, desc=name)
    run = load_run(name, out)
    module.figures(run)
    runs.write_json(workdir / "claims.json", module.claims(run))
    return run


def extend_run(workdir: Path, options: dict, keys) -> None:
    """Give the stored run in ``workdir`` the new ``options`` when they differ only in ``keys``
    (pairs are drawn prefix-stably and tasks seeded by their key, so finished tasks stay valid)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    differ = {k for k in set(stored["options"]) | set(options) if stored["options"].get(k) != options.get(k)}
    if differ - set(keys):
        raise ValueError(f"cannot extend {workdir}: its options differ in {sorted(differ - set(keys))}, which "
                         f"change finished tasks (only {sorted(keys)} may change); use another --out or --overwrite")
    runs.write_json(path, {**stored, "options": options})


def load_run(name: str, out: Path) -> Run:
    """The stored run of study ``name`` under ``out``: its options and the rows of its planned tasks."""
    workdir = Path(out) / name
    cfg = json.loads((workdir / "config.json").read_text())["options"]
    table = runs.ResultTable(workdir / "results.csv", key=("task",))
    keys = {t["task"] for t in study(name).tasks(cfg)}  # rows of tasks no longer planned are not used
    return Run(name, workdir, cfg, [r for r in table.rows if r["task"] in keys])


# --- claims and the report --------------------------------------------------------------------

def claim(statement: str, paper: str, ours: str, verdict: str, reason: str = "", figure: str | None = None) -> dict:
    """One paper claim checked against our numbers."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    return {"claim": statement, "paper": paper, "ours": ours, "verdict": verdict, "reason": reason, "figure": figure}


def budget(run: Run) -> str:
    """N, steps, learning rates and wall time of a run, read from its table."""
    def distinct(column):
        return sorted({float(r[column]) for r in run.rows if r.get(column) not in (None, "")})

    parts = []
    size = next((run.cfg[k] for k in ("n", "images", "batch") if k in run.cfg), None)  # pairs, else images
    if size is not None:
        more = ", ".join(f"{m} {n}" for m, n in run.cfg.get("n_by_method", {}).items())
        parts.append(f"N={size}" + (f" ({more})" if more else ""))
    steps, lrs = distinct("steps") or ([float(run.cfg["steps"])] if "steps" in run.cfg else []), distinct("lr")
    if steps:
        parts.append("steps " + ", ".join(f"{s:g}" for s in steps))
    if lrs:
        parts.append("learning rates " + ", ".join(f"{v:.3g}" for v in lrs))
    elif "lr_scale" in run.cfg:
        parts.append(f"learning rate {run.cfg['lr_scale']:g}x the method's Table-1 rate")
    seconds = {r["task"]: float(r["task_seconds"]) for r in run.rows if r.get("task_seconds") not in (None, "")}
    tasks = len({r["task"] for r in run.rows})
    timed = f"{tasks} tasks" if len(seconds) == tasks else f"{len(seconds)} of {tasks} tasks (the others' times were not recorded)"
    parts.append(f"wall time {sum(seconds.values()):.0f} s over {timed}" if seconds else "wall time not recorded")
    return "; ".join(parts)


def report_lines(out: Path, names) -> tuple[list[str], dict[str, list[str]]]:
    """The report's lines, with every claim re-derived from the stored tables (never from claims.json),
    and the figures each study's claims show."""
    lines = ["# Reproduction report", "",
             f"Generated by `python -m experiments ... --out {out}` from the result tables committed under `{out}` "
             "(each study's `results.csv` and `config.json`); every number below is computed from those tables, "
             "and `tests/test_experiments.py` re-derives this file from them. Setup: the papers use ImageNet "
             "VGG-16 (and ResNet-18, AlexNet, DenseNet-121, CIFAR-10) with 100 pairs per method and the steps and "
             "rates of the supplement's Tables 1-5; here geomexpl's bundled 32x32 digits and faces zoo nets (and the "
             "64x64 / 128x128 photo nets) run on a shared 2-core CPU. Each study states its own budget (N, steps, "
             "learning rates, wall time), read from its table. Studies at the paper's budget take their table's "
             "steps and its rate in [0, 1] units: the tables' rates are Adam steps on ImageNet-normalised pixels "
             "(std 0.226), so the rate x 0.226 is the same step on [0, 1] pixels (`geomexpl.attack.presets`; "
             "fig3_similarity also runs the rates as printed). A study whose run note gives fewer steps or '2x/3x the Table-1 "
             "rate' or fewer steps was run before the paper-budget presets and is not yet re-run. Wall time is the "
             "sum of the tasks' times on that shared CPU (model loading included in each study's first task).", "",
             rule_text(), "", "VERDICTS", ""]
    tally = dict.fromkeys(VERDICTS, 0)
    shown: dict[str, list[str]] = {}
    for name in names:
        lines += [f"## {name}: {study(name).TITLE}", ""]
        if not (Path(out) / name / "config.json").is_file():
            lines += [f"Not run: no table under `{out}`.", ""]
            continue
        run = load_run(name, out)
        planned = len(study(name).tasks(run.cfg))
        done = len({r["task"] for r in run.rows})
        if not done:
            lines += [f"Run: {run.cfg.get('note', '')} Started, no task finished yet (0 of {planned}): no claim can "
                      "be checked.", ""]
            continue
        lines += [f"Run: {run.cfg.get('note', '')} Budget: {budget(run)}. Seed {run.cfg['seed']}"
                  f"{', QUICK mode (not a real result)' if run.cfg.get('quick') else ''}"
                  f"{'' if done == planned else f'; PARTIAL: {done} of {planned} tasks finished'}.", "",
                  "| claim | paper | ours | verdict | reason |", "|---|---|---|---|---|"]
        shown[name] = []
        for c in study(name).claims(run):
            tally[c["verdict"]] += 1
            cells = [c["claim"], c["paper"], c["ours"], f"**{c['verdict']}**", c["reason"]]
            lines.append("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in cells) + " |")
            if c.get("figure") and c["figure"] not in shown[name]:
                shown[name].append(c["figure"])
        table = getattr(study(name), "report_table", None)  # a study's numbers beside its claims, from its tables
        if table is not None:
            lines += ["", table(run).rstrip("\n")]
        lines += [f"\n![{name} {fig}](report_figures/{name}__{fig})" for fig in shown[name]] + [""]
    lines[lines.index("VERDICTS")] = "Claims checked: " + ", ".join(f"{v} {k}" for k, v in tally.items()) + "."
    return lines, shown


def write_report(out: Path, names, path: Path) -> Path:
    """REPORT.md from the stored tables of the studies ``names`` under ``out``; the figures the claims
    show are copied to ``report_figures/`` next to it."""
    path = Path(path)
    lines, shown = report_lines(out, names)
    figures = path.parent / "report_figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name, figs in shown.items():
        for fig in figs:
            if (Path(out) / name / fig).is_file():
                shutil.copyfile(Path(out) / name / fig, figures / f"{name}__{fig}")
    path.write_text("\n".join(lines) + "\n")
    return path


def manipulation_claim(run: Run, label: str, figure: str, paper: str, **where) -> dict:
    """The paper's central claim for the rows matching ``where``: the map moves to the target (median
    PCC above its threshold) while the image stays (median SSIM(x_adv, x)) and the class is kept (rate)."""
    after, image = median_ci(run.values("map_pcc", **where)), median_ci(run.values("image_ssim", **where))
    kept = rate_ci(run.values("class_kept", **where))
    parts = {"map PCC": verdict(after, "map_pcc"), "image SSIM": verdict(image, "image_ssim"),
             "class kept": verdict(kept, "class_kept")}
    steps = int(run.values("steps", **where)[0])
    return claim(f"{label}: the map is manipulated towards the target, image and class stay", paper,
                 f"PCC(h_adv, h_t) {describe(run.values('map_pcc', **where))}, before "
                 f"{np.nanmedian(run.values('map_pcc_before', **where)):.2f}; SSIM(h_adv, h_t) "
                 f"{describe(run.values('map_ssim', **where))}; SSIM(x_adv, x) {describe(run.values('image_ssim', **where))}; "
                 f"class kept {kept}", combine(parts.values()),
                 "; ".join(f"{k}: {v}" for k, v in parts.items()) + f" ({steps} steps)", figure)
