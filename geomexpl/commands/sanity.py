"""Sanity checks of explanation methods on a zoo network (Sixt et al. 2020, Figs. 4a, 4b, 5, 10).

For N test images (explaining their true class) and every method:

* CSC: random relevance vectors injected at --layer (default: the logits) are propagated down with
  the method's rules; per layer, the median |cos| between them (1 = a rank-one chain that ignores
  the layers above). Tables csc.csv (per layer) and csc_histogram.csv (|cos| at the first layer).
* cascading parameter randomisation: weights re-initialised from the top layer down; SSIM
  (max of SSIM(a, b) and SSIM(a, -b)) and Spearman rank correlation to the original map
  (randomisation.csv).
* random logit: SSIM between the maps of the true class and of a random other class (random_logit.csv).

Methods are given as NAME or NAME:key=value,key=value (explain options such as beta, smoothgrad,
preset, variant); pattern methods get patterns fitted on --pattern-images training images (cached),
kept fixed while the weights are randomised (as with Sixt et al.'s precomputed patterns).
Writes the tables, config.json and csc.png, randomisation.png, randomisation_maps.png and
random_logit.png to --out; a rerun with the same settings skips the methods already in the tables.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from geomexpl import runs
from geomexpl.explain.patterns import PATTERN_METHODS

HELP = "sanity checks: cosine similarity convergence, parameter randomisation, random logit (Sixt et al.)"
TABLES = {"csc": "csc.csv", "histogram": "csc_histogram.csv", "randomisation": "randomisation.csv",
          "random_logit": "random_logit.csv"}
CONFIG = "config.json"
TEXT_COLUMNS = {"method", "start", "layer", "kind"}  # never parsed as numbers when resuming
DEFAULT_METHODS = (
    "gradient", "gradient:smoothgrad=8", "gradient:beta=2", "grad_x_input", "integrated_gradients:steps=16",
    "lrp", "lrp_epsilon", "lrp_alpha_beta:preset=a1b0", "lrp_alpha_beta:preset=a2b1",
    "lrp_alpha_beta:preset=a5b4", "lrp_cmp", "deep_taylor", "excitation_backprop", "guided_backprop",
    "deconvnet", "rectgrad", "pattern_net", "pattern_attribution", "deeplift", "deeplift:variant=ablation")


def configure(parser) -> None:
    parser.add_argument("--arch", default="vgg", help="zoo architecture (see `geomexpl train --help`)")
    parser.add_argument("--dataset", default="digits", help="built-in dataset")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods as NAME or NAME:key=value,... (default: every available one of "
                             f"{', '.join(DEFAULT_METHODS)})")
    parser.add_argument("--n", type=int, default=8, help="number of test images (drawn with --seed)")
    parser.add_argument("--layer", default=None,
                        help="layer the CSC injects its random vectors at: a named_modules() path such as "
                             "'16' or 'features.16' (any name of "
                             "geomexpl.explain.layer_names(model); default: the logits)")
    parser.add_argument("--vectors", type=int, default=5, help="random relevance vectors per image (CSC)")
    parser.add_argument("--order", choices=("cascading", "independent"), default="cascading",
                        help="parameter randomisation order")
    parser.add_argument("--pattern-images", type=int, default=512,
                        help="training images PatternNet/PatternAttribution fit their patterns on")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image draw, random vectors and weights")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    runs.add_overwrite(parser)


def parse_method(spec: str) -> tuple[str, dict]:
    """'NAME:key=value,key=value' -> (NAME, {key: int, float or str value})."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"method option {item!r} of {spec!r} must be key=value")
        options[key] = _number(value)
    return name, options


def _number(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def run(args) -> int:
    from geomexpl import data, nets
    from geomexpl.explain import METHODS, fit_patterns
    from geomexpl.sanity.convergence import csc_methods

    if args.n < 1 or args.vectors < 2:
        raise ValueError("--n must be >= 1 and --vectors >= 2")
    specs = list(args.methods) if args.methods else [m for m in DEFAULT_METHODS if parse_method(m)[0] in METHODS]
    for spec in specs:
        name = parse_method(spec)[0]
        if name not in METHODS:
            raise ValueError(f"unknown explanation method {name!r} in --methods; available: {sorted(METHODS)}")
        if name not in csc_methods():
            raise ValueError(f"method {name!r} has no propagation rules for the CSC; available: {csc_methods()}")
    device = runs.resolve_device(args.device)
    model = nets.pretrained(args.arch, args.dataset).to(device)
    spec_ = data.spec(args.dataset)
    images, labels = data.load(args.dataset, "test")
    if args.n > len(images):
        raise ValueError(f"--n {args.n} exceeds the {len(images)} test images of {args.dataset}")
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.n].sort().values
    x, y = images[index].to(device), labels[index].to(device)
    config = {"arch": args.arch, "dataset": args.dataset, "n": args.n, "layer": args.layer,
              "vectors": args.vectors, "order": args.order, "pattern_images": args.pattern_images,
              "seed": args.seed, "images": index.tolist(), "labels": y.tolist()}
    bounds = (spec_.lower, spec_.upper)
    _dry_run(model, x[:1], specs, args.layer, bounds)
    resumed = runs.start_run(args.out, {"command": "sanity", **config}, args.seed, device, overwrite=args.overwrite)
    tables = _resume(args.out) if resumed else {key: [] for key in TABLES}
    done = set.intersection(*({row["method"] for row in rows} for rows in tables.values()))
    patterns = None
    maps = {}
    for spec in tqdm([s for s in specs if s not in done], desc="sanity checks", unit="method"):
        name, options = parse_method(spec)
        options = {"bounds": bounds, **options}
        if name in PATTERN_METHODS:
            if patterns is None:
                patterns = fit_patterns(model, data.load(args.dataset, "train")[0][: args.pattern_images].to(device))
            options["patterns"] = patterns
        csc, rand, logit = _check(model, x, y, name, options, args)
        _append_rows(spec, tables, csc, rand, logit)
        maps[spec] = rand.maps[:, 0].cpu()
        for key, path in TABLES.items():
            runs.write_csv(args.out / path, tables[key])
    _figures(args.out, tables, maps, specs, config)
    _print_summary(tables, specs)
    print(f"wrote {', '.join(TABLES.values())}, {CONFIG} and figures to {args.out}")
    return 0


def _check(model, x, y, name, options, args):
    """One method: CSC, parameter randomisation and random logit, each with a fresh seeded generator
    so every method sees the same random vectors, weights and classes."""
    from geomexpl import sanity

    def generator():
        return torch.Generator(device=x.device).manual_seed(args.seed)

    csc = sanity.cosine_similarity_convergence(model, x, name, args.layer, args.vectors, generator(), **options)
    rand = sanity.parameter_randomisation(model, x, name, args.order, y, generator(), **options)
    logit = sanity.random_logit(model, x, name, y, generator(), **options)
    return csc, rand, logit


def _append_rows(spec, tables, csc, rand, logit) -> None:
    """Append the method's rows under its full spec (e.g. 'gradient:beta=2') to the tables."""
    first_layer = [e for e in csc.layers if e.kind == "linear"][-1:]  # Fig. 5e-g: after the first layer
    for entry in first_layer:
        counts, edges = entry.histogram()
        tables["histogram"] += [{"method": spec, "layer": entry.layer, "bin_low": float(lo), "bin_high": float(hi),
                                 "count": int(c)} for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
    for key, rows in (("csc", csc.rows()), ("randomisation", rand.rows()), ("random_logit", logit.rows())):
        tables[key] += [{**row, "method": spec} for row in rows]


def _resume(out: Path) -> dict[str, list[dict]]:
    """Rows of the earlier run of these settings in ``out`` (empty tables where none were written)."""
    tables = {}
    for key, path in TABLES.items():
        if not (out / path).is_file():
            tables[key] = []
            continue
        with (out / path).open() as fh:
            tables[key] = [{k: v if k in TEXT_COLUMNS else _number(v) for k, v in row.items()}
                           for row in csv.DictReader(fh)]
    return tables


def _dry_run(model, x, specs, layer, bounds) -> None:
    """Each method spec once on one image (patterns and the CSC layer aside), so that a misspelt
    option or layer fails before anything is written, naming the spec."""
    from geomexpl.explain import explain, layer_names

    if layer is not None and layer not in layer_names(model):
        raise ValueError(f"--layer {layer!r} is not a layer of the model; layers (named_modules() paths and "
                         f"functional nodes): {layer_names(model)}")
    for spec in specs:
        name, options = parse_method(spec)
        if name in PATTERN_METHODS:
            continue
        try:
            explain(model, x, name, **{"bounds": bounds, **options})
        except (TypeError, ValueError) as err:
            raise ValueError(f"--methods {spec!r}: {err}") from None


# ------------------------------------------------------------------ figures
def _figures(out: Path, tables: dict, maps: dict, specs: list[str], config: dict) -> None:
    from geomexpl import plot

    title = f"{config['arch']}/{config['dataset']}, median of {config['n']} images"
    _csc_figure(out / "csc.png", tables["csc"], specs, title)
    ssim = {}
    for spec in specs:
        rows = [r for r in tables["randomisation"] if r["method"] == spec]
        grid = np.ones((config["n"], max(r["step"] for r in rows) + 1))
        for r in rows:
            grid[r["example"], r["step"]] = r["ssim"]
        ssim[spec] = np.median(grid, axis=0)[None]
    layers = [r["layer"] for r in tables["randomisation"] if r["method"] == specs[0] and r["example"] == 0]
    fig, ax = _method_axes()
    plot.percentile_curves(np.arange(len(layers) + 1), ssim, ax=ax, xlabel="layers randomised (from the top)",
                           ylabel="SSIM to the original map", title=f"{config['order']} randomisation, {title}")
    ax.set_xticks(range(len(layers) + 1), ["none"] + layers, rotation=90, fontsize=6)
    plot.outside_legend(ax, fontsize=6)
    fig.savefig(out / "randomisation.png", dpi=120, bbox_inches="tight")
    plot.box_plots({spec: [r["ssim"] for r in tables["random_logit"] if r["method"] == spec] for spec in specs},
                   out / "random_logit.png", ylabel="SSIM(true class, random class)",
                   title=f"random logit, {config['arch']}/{config['dataset']}, {config['n']} images")
    if maps:
        _maps_figure(out / "randomisation_maps.png", maps, ["original"] + layers)


def _method_axes():
    """A figure whose lines cycle through 20 colours and 3 line styles, so 20+ methods stay apart."""
    from cycler import cycler
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.5))
    ax = fig.add_subplot()
    ax.set_prop_cycle(cycler(linestyle=["-", "--", ":"]) * cycler(color=colormaps["tab20"].colors))
    return fig, ax


def _csc_figure(path: Path, rows: list[dict], specs: list[str], title: str) -> None:
    """Sixt et al. Fig. 5: 1 - median |cos| (log scale) per linear layer (conv, dense, pooling, add)
    below the injection, per method, and for random vectors of the same length. A single-channel
    input has trivial per-pixel cosines, so there the whole map is compared."""
    from geomexpl import plot

    floor = 1e-16  # converged to working precision: drawn at the floor

    def gap(row, baseline=False):
        whole = row["kind"] == "input" and row["dim"] == 1
        key = ("global_" if whole else "") + ("baseline_median_cos" if baseline else "median_cos")
        return row["one_minus_median_cos"] if key == "median_cos" else 1 - row[key]

    curves, names = {}, []
    for spec in specs:
        kept = [r for r in rows if r["method"] == spec and r["kind"] in ("linear", "input")]
        names = names or [r["layer"] + (" (whole map)" if r["kind"] == "input" and r["dim"] == 1 else "")
                          for r in kept]
        curves[spec] = np.maximum([gap(r) for r in kept], floor)[None]
        baseline = np.maximum([gap(r, baseline=True) for r in kept], floor)[None]
    fig, ax = _method_axes()
    plot.percentile_curves(np.arange(len(names)), {**curves, "random vectors": baseline}, ax=ax, logy=True,
                           ylabel="1 - median |cos| (CSC)",
                           xlabel="layer (injection at the left, input at the right)",
                           title=f"cosine similarity convergence, {title}")
    ax.lines[-1].set(color="black", linestyle="--", linewidth=2)
    ax.set_ylim(floor / 2, 1.5)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    plot.outside_legend(ax, fontsize=6)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _maps_figure(path: Path, maps: dict, columns: list[str]) -> None:
    """Sixt et al. Fig. 10: the first image's map per method (rows) as the layers are randomised."""
    from matplotlib.figure import Figure

    from geomexpl.plot import heatmap

    fig = Figure(figsize=(0.7 * len(columns) + 1.5, 0.7 * len(maps) + 0.6))
    axes = fig.subplots(len(maps), len(columns), squeeze=False)
    for row, (spec, stack) in enumerate(maps.items()):
        for col in range(len(columns)):
            heatmap(axes[row, col], stack[col], vmax=1.0, title=columns[col] if row == 0 else None)
        axes[row, 0].set_ylabel(spec, rotation=0, ha="right", fontsize=6)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _print_summary(tables: dict, specs: list[str]) -> None:
    for spec in specs:
        csc = [r for r in tables["csc"] if r["method"] == spec and r["kind"] == "linear"]
        rand = [r["ssim"] for r in tables["randomisation"] if r["method"] == spec and r["step"] == 1]
        logit = [r["ssim"] for r in tables["random_logit"] if r["method"] == spec]
        print(f"{spec:32s} CSC median |cos| at the lowest layer {csc[-1]['median_cos']:.6f}; "
              f"SSIM after randomising the top layer {np.median(rand):.3f}; random logit SSIM {np.median(logit):.3f}")
