"""Every figure is written as a readable PNG with the promised layout; heatmaps centre zero."""
from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from geomexpl import plot


def read_png(path) -> np.ndarray:
    assert path.stat().st_size > 0
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels[..., :3].std() > 0.01  # something was drawn
    return pixels


def axes_grid() -> Figure:
    fig = Figure()
    fig.subplots(1, 2)
    return fig


@pytest.mark.parametrize("m", [np.linspace(-0.2, 3.0, 30).reshape(5, 6), np.abs(np.random.default_rng(0).random((5, 6)))])
def test_heatmap_limits_are_symmetric_and_zero_is_the_centre_colour(m):
    fig = axes_grid()
    ax = fig.axes[0]
    assert plot.heatmap(ax, torch.tensor(m)) is fig
    artist = ax.images[0]
    vmin, vmax = artist.get_clim()
    assert vmin == -vmax and vmax == pytest.approx(np.abs(m).max())
    centre = artist.cmap(0.5)
    np.testing.assert_allclose(artist.to_rgba(np.array([[0.0]]))[0, 0], centre)
    assert min(centre[:3]) > 0.95  # white: neither red nor blue
    top = artist.to_rgba(np.array([[vmax]]))[0, 0]
    assert top[0] > top[2]  # positive relevance is red


def test_heatmap_of_an_all_zero_map_is_white():
    fig = axes_grid()
    plot.heatmap(fig.axes[0], np.zeros((4, 4)))
    artist = fig.axes[0].images[0]
    np.testing.assert_allclose(artist.to_rgba(np.zeros((1, 1)))[0, 0], artist.cmap(0.5))


def test_image_gray_and_rgb_and_bounds():
    fig = axes_grid()
    plot.image(fig.axes[0], torch.rand(1, 8, 8))
    assert fig.axes[0].images[0].get_cmap().name == "gray"
    x = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 4, 4)
    plot.image(fig.axes[1], x, lower=[-1.0, -1.0, -1.0], upper=1.0)
    shown = fig.axes[1].images[0].get_array()
    assert shown.shape == (4, 4, 3)
    np.testing.assert_allclose(shown[0, 0], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="C in"):
        plot.image(fig.axes[0], torch.rand(2, 8, 8))


@pytest.mark.parametrize("rows,channels", [(1, 3), (3, 1)])
def test_manipulation_figure_layout(tmp_path, rows, channels):
    x = torch.rand(rows, channels, 10, 10)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    maps = [torch.rand(rows, 10, 10) for _ in range(3)]
    path = tmp_path / "fig2" / "manipulation.png"
    labels = [f"row {r}" for r in range(rows)]
    fig = plot.manipulation_figure(x, maps[0], maps[1], x_adv, maps[2], path, row_labels=labels, title="a title")
    read_png(path)
    bars = fig.axes[rows * 6:]
    assert len(bars) == 2 * rows  # per row: the maps' colour bar and the perturbation's
    assert [fig.axes[6 * r].get_ylabel() for r in range(rows)] == labels
    assert fig.get_suptitle() == "a title"
    assert fig._suptitle.get_window_extent().y0 > fig.axes[0].title.get_window_extent().y1  # no collision
    assert [ax.get_title() for ax in fig.axes[:6]] == list(plot.MANIPULATION_TITLES)
    assert all(len(ax.images) == 1 for ax in fig.axes[: rows * 6])
    perturbation = fig.axes[5].images[0]
    limit = float((x_adv - x).sum(1).abs().max())  # one perturbation scale for the whole figure
    assert all(fig.axes[6 * r + 5].images[0].get_clim() == pytest.approx((-limit, limit)) for r in range(rows))
    assert bars[1].get_ylim() == pytest.approx((-limit, limit))  # the colour bar states the range
    np.testing.assert_allclose(perturbation.get_array(), (x_adv - x)[0].sum(0).numpy(), atol=1e-6)
    low, high = perturbation.get_clim()
    assert low == -high
    shared = {fig.axes[column].images[0].get_clim() for column in (1, 2, 4)}
    assert len(shared) == 1  # the three maps of a row share their colour scale
    red_frames = [a for a in fig.artists if a.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(red_frames) == 1


def test_manipulation_figure_rejects_mismatched_inputs(tmp_path):
    x = torch.rand(2, 1, 8, 8)
    maps = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="target_map must be"):
        plot.manipulation_figure(x, maps, maps[:1], x, maps, tmp_path / "a.png")
    with pytest.raises(ValueError, match="titles must name the 6 columns"):
        plot.manipulation_figure(x, maps, maps, x, maps, tmp_path / "a.png", titles=["a", "b"])


def test_box_plots_from_dict_and_long_form_rows(tmp_path):
    rng = np.random.default_rng(0)
    table = {"Gradient": rng.random(50), "LRP": rng.random(50) + 1}
    fig = plot.box_plots(table, tmp_path / "box.png", "SSIM")
    read_png(tmp_path / "box.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Gradient", "LRP"]
    assert ax.get_ylabel() == "SSIM"
    first_box = ax.lines[:6]  # per box: 2 whiskers, 2 caps, the box outline, the median
    drawn_y = np.concatenate([line.get_ydata() for line in first_box])
    for value in np.percentile(table["Gradient"], [10, 25, 50, 75, 90]):  # footnote 2 of the paper
        assert np.abs(drawn_y - value).min() < 1e-12
    assert drawn_y.min() == pytest.approx(np.percentile(table["Gradient"], 10))
    assert drawn_y.max() == pytest.approx(np.percentile(table["Gradient"], 90))

    rows = [{"method": m, "value": v} for m, values in table.items() for v in values]
    rows.append({"method": "LRP", "value": float("nan")})
    fig = plot.box_plots(rows, tmp_path / "box_rows.png", "SSIM")
    read_png(tmp_path / "box_rows.png")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["Gradient", "LRP\nn=50 of 51"]


def test_box_plots_draws_into_a_given_axes():
    fig = axes_grid()
    assert plot.box_plots({"a": [1.0, 2.0, 3.0]}, None, "MSE", ax=fig.axes[1]) is fig
    assert fig.axes[1].get_ylabel() == "MSE" and not fig.axes[0].lines


def test_percentile_curves_band_and_fitted_slope(tmp_path):
    beta = np.logspace(0, 2, 8)
    rng = np.random.default_rng(1)
    curvature = 3.0 * beta ** 2 * np.exp(0.1 * rng.standard_normal((40, 8)))
    path = tmp_path / "curves.png"
    fig = plot.percentile_curves(beta, {"curvature": curvature}, path, logx=True, logy=True, fit_slope=True,
                                 xlabel="beta", ylabel="lambda_max")
    read_png(path)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    median_line, fit_line = ax.lines
    np.testing.assert_allclose(median_line.get_ydata(), np.median(curvature, axis=0))
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(np.percentile(curvature, 10, axis=0).min())
    assert band.max() == pytest.approx(np.percentile(curvature, 90, axis=0).max())
    slope = float(fit_line.get_label().rsplit(" ", 1)[1])
    assert slope == pytest.approx(2.0, abs=0.05)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["curvature", fit_line.get_label()]


def test_percentile_curves_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match=r"must be \[N, 3\]"):
        plot.percentile_curves([1, 2, 3], {"a": np.ones((4, 2))})


def test_morf_curves(tmp_path):
    fractions = np.linspace(0, 1, 11)
    gradient = 1 - fractions
    random = np.clip(1 - 0.5 * fractions + 0.05 * np.random.default_rng(2).standard_normal((5, 11)), 0, 1)
    fig = plot.morf_curves(fractions, {"Gradient": gradient, "random": random}, tmp_path / "morf.png")
    read_png(tmp_path / "morf.png")
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 1  # the band only for the repeated curves
    assert ax.get_ylabel() == "accuracy" and ax.get_ylim() == (0.0, 1.02)


def test_curves_have_integer_ticks_for_counts_distinct_styles_and_the_legend_off_the_axes(tmp_path):
    fig = plot.percentile_curves(np.arange(7), {"a": np.random.rand(3, 7), "b": np.random.rand(3, 7)},
                                 tmp_path / "c.png", xlabel="layers")
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 6]
    assert ticks and all(float(t).is_integer() for t in ticks)
    a, b = ax.get_lines()
    assert (a.get_linestyle(), a.get_marker()) != (b.get_linestyle(), b.get_marker())
    fig.canvas.draw()
    legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes_box.x1  # right of the data, never over it


def test_explanations_figure_gives_every_map_a_colour_bar_with_its_range(tmp_path):
    x = torch.rand(2, 1, 8, 8)
    maps = {"a": torch.randn(2, 8, 8), "b": 5 * torch.randn(2, 8, 8)}
    fig = plot.explanations_figure(x, maps, tmp_path / "e.png")
    read_png(tmp_path / "e.png")
    bars = [ax for ax in fig.axes if not ax.images]  # colour bar axes hold no image
    assert len(bars) == 4
    limit = float(maps["b"][1].abs().max())
    assert bars[-1].get_ylim() == pytest.approx((-limit, limit))
