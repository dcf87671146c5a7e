"""The papers' figures: red/blue heatmaps, the manipulation grid (Dombrowski et al. Fig. 2), box
plots (Fig. 3), median + percentile-band curves (Fig. 4, curvature against beta) and pixel-flipping
curves (Fig. 7).

Figures are built as :class:`matplotlib.figure.Figure` objects on the Agg canvas, never through
pyplot, so nothing is ever shown and no global figure state leaks. Functions drawing into a given
``ax`` return its figure; the others draw a new figure (or into ``ax`` when given), write it to
``path`` when given (PNG, PDF, ... by suffix) and return it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cbook import boxplot_stats
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

HEATMAP_CMAP = "seismic"  # Sixt et al.'s red (positive) / white (zero) / blue (negative) map
BAND_PERCENTILES = (10, 90)  # Dombrowski et al. footnote 2: whiskers and bands at 10th/90th
BAND_ALPHA = 0.3
LINE_STYLES = ("-", "--", "-.", ":")  # with MARKERS, so curves that lie on each other stay distinguishable
MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*")
MANIPULATION_TITLES = ("original image", "original map", "target map",
                       "manipulated image", "manipulated map", "perturbation")


def _numpy(a, name: str) -> np.ndarray:
    array = a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=float)
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _figure_and_axes(ax: Axes | None, figsize=(5.0, 3.6)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(figsize)
    return fig, fig.add_subplot()


def _save(fig: Figure, path) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def heatmap(ax: Axes, m, *, vmax: float | None = None, cmap: str = HEATMAP_CMAP, title: str | None = None) -> Figure:
    """Draw a relevance map [H, W] (or [1, H, W]) in red/blue with colour limits [-vmax, vmax].

    vmax defaults to max |m|, so zero is always the colormap's centre (white), also for
    non-negative maps, which then show in shades of red only.
    """
    m = _numpy(m, "m")
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"m must be a [H, W] map, got shape {m.shape}")
    limit = float(np.abs(m).max()) if vmax is None else float(vmax)
    if not np.isfinite(limit):
        raise ValueError("m contains NaN or inf values")
    limit = limit if limit > 0 else 1.0
    ax.imshow(m, cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax.figure


def image(ax: Axes, x, *, lower=0.0, upper=1.0, title: str | None = None) -> Figure:
    """Draw an input [C, H, W] (C = 1: gray, C = 3: RGB) whose values lie in [lower, upper].

    ``lower``/``upper`` are numbers or per-channel sequences (a dataset's bounds); values are mapped
    to [0, 1] and clipped.
    """
    x = _numpy(x, "x")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"x must be a [C, H, W] image with C in (1, 3), got shape {x.shape}")
    lo = np.asarray(lower, dtype=float).reshape(-1, 1, 1)
    hi = np.asarray(upper, dtype=float).reshape(-1, 1, 1)
    shown = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    if shown.shape[0] == 1:
        ax.imshow(shown[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(shown.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax.figure


def manipulation_figure(x, map_x, target_map, x_adv, map_adv, path=None, titles=None, *,
                        lower=0.0, upper=1.0, row_labels=None, title: str | None = None) -> Figure:
    """Dombrowski et al. Fig. 2: one row per example, six columns: original image, original map,
    target map, manipulated image, manipulated map (both framed in red, as in the paper) and the
    perturbation x_adv - x (summed over channels, red/blue around zero).

    x, x_adv: [N, C, H, W] in [lower, upper]; maps: [N, H, W]. The three maps of a row share one
    colour scale (a colour bar per row gives its range); the perturbation has one colour scale for
    the whole figure (one colour bar), so perturbations of different rows compare. ``titles``: six
    column titles; ``row_labels``: one label per row (e.g. method, class and map PCC), written
    left of the row; ``title``: a figure title above the column titles.
    """
    x, x_adv = _numpy(x, "x"), _numpy(x_adv, "x_adv")
    maps = {"map_x": _numpy(map_x, "map_x"), "target_map": _numpy(target_map, "target_map"),
            "map_adv": _numpy(map_adv, "map_adv")}
    if x.ndim != 4 or x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must be [N, C, H, W] of one shape, got {x.shape} and {x_adv.shape}")
    for name, m in maps.items():
        if m.shape != (x.shape[0], *x.shape[2:]):
            raise ValueError(f"{name} must be [N, H, W] = {(x.shape[0], *x.shape[2:])}, got {m.shape}")
    titles = MANIPULATION_TITLES if titles is None else tuple(titles)
    if len(titles) != 6:
        raise ValueError(f"titles must name the 6 columns, got {len(titles)}")
    rows = x.shape[0]
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels must label the {rows} rows, got {len(row_labels)}")
    left = 1.6 if row_labels is not None else 0.1  # inches
    head = 0.45 + (0.35 if title else 0.0)
    width, height = left + 6 * 1.5 + 1.4, rows * 1.5 + head
    fig = _new_figure((width, height))
    axes = fig.subplots(rows, 6, squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - 1.4 / width, bottom=0.05 / height, top=1 - head / height,
                        wspace=0.08, hspace=0.12)
    perturbation = (x_adv - x).sum(axis=1)
    limit = float(np.abs(perturbation).max()) or 1.0
    for row in range(rows):
        shared = max(float(np.abs(m[row]).max()) for m in maps.values())
        image(axes[row, 0], x[row], lower=lower, upper=upper)
        heatmap(axes[row, 1], maps["map_x"][row], vmax=shared)
        heatmap(axes[row, 2], maps["target_map"][row], vmax=shared)
        image(axes[row, 3], x_adv[row], lower=lower, upper=upper)
        heatmap(axes[row, 4], maps["map_adv"][row], vmax=shared)
        heatmap(axes[row, 5], perturbation[row], vmax=limit)
        if row_labels is not None:
            axes[row, 0].set_ylabel(row_labels[row], rotation=0, ha="right", va="center", fontsize=8, labelpad=6)
    for column, name in enumerate(titles):
        axes[0, column].set_title(name, fontsize=9)
    top, bottom = axes[0, 3].get_position(), axes[-1, 4].get_position()
    pad = 0.004
    fig.add_artist(Rectangle((top.x0 - pad, bottom.y0 - pad), bottom.x1 - top.x0 + 2 * pad,
                             top.y1 - bottom.y0 + 2 * pad, transform=fig.transFigure,
                             fill=False, edgecolor="red", linewidth=2))
    for row in range(rows):  # colour bars right of the figure: the row's map scale, then the perturbation's
        box = axes[row, 5].get_position()
        for k, (source, label) in enumerate(((axes[row, 4], "maps"), (axes[row, 5], "perturbation"))):
            cax = fig.add_axes((box.x1 + (0.1 + 0.65 * k) / width, box.y0, 0.1 / width, box.height))
            bar = fig.colorbar(source.images[-1], cax=cax)
            bar.ax.tick_params(labelsize=6)
            bar.ax.yaxis.get_offset_text().set_fontsize(6)
            if row == 0:
                cax.set_title(label, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    return _save(fig, path)


def explanations_figure(x, maps: Mapping, path=None, *, lower=0.0, upper=1.0) -> Figure:
    """One row per image: the image, then its map for each method (red/blue heatmaps, each with a
    colour bar giving its range).

    x: [N, C, H, W]; maps: method name -> [N, H, W].
    """
    x = _numpy(x, "x")
    maps = {name: _numpy(m, name) for name, m in maps.items()}
    for name, m in maps.items():
        if m.shape != (x.shape[0], *x.shape[2:]):
            raise ValueError(f"map {name!r} must be [N, H, W] = {(x.shape[0], *x.shape[2:])}, got {m.shape}")
    cols = 1 + len(maps)
    fig = _new_figure((cols * 1.5, x.shape[0] * 1.5 + 0.4))
    axes = fig.subplots(x.shape[0], cols, squeeze=False)
    for row in range(x.shape[0]):
        image(axes[row, 0], x[row], lower=lower, upper=upper, title="image" if row == 0 else None)
        for col, (name, m) in enumerate(maps.items(), start=1):
            heatmap(axes[row, col], m[row], title=name if row == 0 else None)
            bar = fig.colorbar(axes[row, col].images[-1], ax=axes[row, col], fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=5)
            bar.ax.yaxis.get_offset_text().set_fontsize(5)
    return _save(fig, path)


def _grouped(table, group_key: str, value_key: str) -> dict[str, np.ndarray]:
    if isinstance(table, Mapping):
        groups = {str(name): _numpy(values, f"table[{name!r}]").ravel() for name, values in table.items()}
    elif isinstance(table, Iterable):
        collected: dict[str, list[float]] = {}
        for row in table:
            collected.setdefault(str(row[group_key]), []).append(float(row[value_key]))
        groups = {name: np.asarray(values) for name, values in collected.items()}
    else:
        raise TypeError(f"table must be a dict of arrays or an iterable of rows, got {type(table).__name__}")
    if not groups:
        raise ValueError("table is empty")
    return groups


def box_plots(table, path=None, ylabel: str = "", *, ax: Axes | None = None, title: str | None = None,
              logy: bool = False, group_key: str = "method", value_key: str = "value") -> Figure:
    """Dombrowski et al. Fig. 3: one box per method; boxes span the 25th-75th percentiles, whiskers
    end exactly at the 10th and 90th percentiles, the line is the median (footnote 2).

    ``table``: {method: values} or long-form rows ({group_key: method, value_key: value, ...}).
    Non-finite values are left out and the kept count is then written under the method's name.
    """
    groups = _grouped(table, group_key, value_key)
    fig, ax = _figure_and_axes(ax, figsize=(max(3.0, 0.9 * len(groups) + 1.0), 3.6))
    data, labels = [], []
    for name, values in groups.items():
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise ValueError(f"table[{name!r}] has no finite values")
        data.append(finite)
        labels.append(name if finite.size == values.size else f"{name}\nn={finite.size} of {values.size}")
    stats = boxplot_stats(data)
    for stat, values in zip(stats, data):  # matplotlib would stop whiskers at data points
        stat["whislo"], stat["whishi"] = np.percentile(values, BAND_PERCENTILES)
    ax.bxp(stats, showfliers=False, medianprops={"color": "black"})
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30 if len(labels) > 4 else 0, fontsize=8)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title is not None:
        ax.set_title(title)
    return _save(fig, path)


def outside_legend(ax: Axes, fontsize: float = 7) -> None:
    """The legend right of the axes, off the data (figures are saved with a tight bounding box)."""
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _draw_band(ax: Axes, x: np.ndarray, ys: np.ndarray, label: str) -> tuple[np.ndarray, str]:
    """Median line and 10th-90th percentile band (NaN entries ignored); returns the median, colour."""
    if ys.ndim == 1:
        ys = ys[None]
    if ys.ndim != 2 or ys.shape[1] != x.size:
        raise ValueError(f"{label!r} must be [N, {x.size}] (one column per x), got shape {ys.shape}")
    median = np.nanmedian(ys, axis=0)
    k = len(ax.get_lines())
    (line,) = ax.plot(x, median, label=label, linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                      marker=MARKERS[k % len(MARKERS)], markersize=4)
    if ys.shape[0] > 1:
        low, high = np.nanpercentile(ys, BAND_PERCENTILES, axis=0)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=BAND_ALPHA, linewidth=0)
    return median, line.get_color()


def percentile_curves(x, ys: Mapping, path=None, *, ax: Axes | None = None, xlabel: str = "",
                      ylabel: str = "", logx: bool = False, logy: bool = False, fit_slope: bool = False,
                      title: str | None = None) -> Figure:
    """Dombrowski et al. Fig. 4: per label, the median over N runs against x with the 10th-90th
    percentile band shaded; ys maps label -> [N, len(x)].

    ``fit_slope`` adds a dashed least-squares line through the median, fitted in the plotted
    coordinates (log10 where an axis is logarithmic, so on log-log axes the slope is the exponent
    p of y ~ x^p, e.g. curvature against beta); its slope is written in the legend.
    """
    x = _numpy(x, "x").ravel()
    if not ys:
        raise ValueError("ys is empty")
    fig, ax = _figure_and_axes(ax)
    for label, values in ys.items():
        median, colour = _draw_band(ax, x, _numpy(values, f"ys[{label!r}]"), str(label))
        if fit_slope:
            fx = np.log10(x) if logx else x
            fy = np.log10(median) if logy else median
            keep = np.isfinite(fx) & np.isfinite(fy)
            if keep.sum() < 2:
                raise ValueError(f"ys[{label!r}] has fewer than two plottable medians to fit a slope")
            slope, intercept = np.polyfit(fx[keep], fy[keep], 1)
            fitted = slope * fx + intercept
            ax.plot(x, 10 ** fitted if logy else fitted, linestyle="--", color=colour,
                    label=f"{label} fit: slope {slope:.3g}")
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    if not logx and np.allclose(x, np.round(x)):  # counts (layers, N): integer ticks only
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    outside_legend(ax)
    if title is not None:
        ax.set_title(title)
    return _save(fig, path)


def morf_curves(fractions, curves: Mapping, path=None, *, ax: Axes | None = None,
                title: str | None = None) -> Figure:
    """Pixel flipping (Dombrowski et al. Fig. 7, supplement D.1): accuracy against the fraction of
    most relevant pixels flipped, one line per method; a [R, S] entry (e.g. R random-map seeds)
    shows its median and 10th-90th percentile band. Lower curves mean better explanations.
    """
    fractions = _numpy(fractions, "fractions").ravel()
    if not curves:
        raise ValueError("curves is empty")
    fig, ax = _figure_and_axes(ax)
    for label, accuracies in curves.items():
        _draw_band(ax, fractions, _numpy(accuracies, f"curves[{label!r}]"), str(label))
    ax.set_xlabel("fraction of pixels flipped (most relevant first)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.02)
    outside_legend(ax)
    if title is not None:
        ax.set_title(title)
    return _save(fig, path)
