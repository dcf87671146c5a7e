"""Metrics against independent oracles (skimage, numpy, scipy) and on constructed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from geomexpl import metrics

SETTINGS = settings(deadline=None, max_examples=25)


def make_pair(kind: str, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two related arrays of one kind: images in [0, 1], sum-one maps, or nearly constant images."""
    rng = np.random.default_rng(seed)
    if kind == "image":
        a = rng.random(shape)
        b = np.clip(a + 0.2 * rng.standard_normal(shape), 0, 1)
    elif kind == "map":
        a = np.abs(rng.standard_normal(shape)) ** 3
        b = a + np.abs(rng.standard_normal(shape))
        a, b = a / a.sum(), b / b.sum()
    else:  # nearly constant: tiny variations around 0.5, where the constants C1, C2 dominate
        a = 0.5 + 1e-3 * rng.random(shape)
        b = 0.5 + 1e-3 * rng.random(shape)
    return a, b


def skimage_ssim(a: np.ndarray, b: np.ndarray, multichannel: bool, data_range=None) -> float:
    if data_range is None:
        data_range = max(a.max(), b.max()) - min(a.min(), b.min())
    return structural_similarity(a, b, data_range=data_range, channel_axis=0 if multichannel else None)


shapes = st.tuples(st.integers(1, 3), st.sampled_from([None, 1, 3]), st.integers(7, 34), st.integers(7, 34))


@SETTINGS
@given(shape=shapes, kind=st.sampled_from(["image", "map", "constant"]), seed=st.integers(0, 2**31))
def test_ssim_matches_skimage(shape, kind, seed):
    batch, channels, height, width = shape
    full = (batch, height, width) if channels is None else (batch, channels, height, width)
    a, b = make_pair(kind, full, seed)
    ours = metrics.ssim(torch.tensor(a), torch.tensor(b)).numpy()
    expected = [skimage_ssim(a[i], b[i], channels is not None) for i in range(batch)]
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("win_size", [3, 5, 7])
def test_ssim_32x32_maps_float32_and_explicit_range_match_skimage(win_size):
    a, b = make_pair("map", (4, 32, 32), seed=win_size)
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    ours = metrics.ssim(ta, tb, data_range=0.02, win_size=win_size)
    assert ours.dtype == torch.float32
    expected = [structural_similarity(ta[i].double().numpy(), tb[i].double().numpy(), data_range=0.02,
                                      win_size=win_size) for i in range(4)]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4, rtol=0)


@SETTINGS
@given(shape=shapes, kind=st.sampled_from(["image", "map"]), seed=st.integers(0, 2**31))
def test_ssim_identity_symmetry_and_batch_independence(shape, kind, seed):
    batch, channels, height, width = shape
    full = (batch, height, width) if channels is None else (batch, channels, height, width)
    a, b = (torch.tensor(v) for v in make_pair(kind, full, seed))
    torch.testing.assert_close(metrics.ssim(a, a), torch.ones(batch, dtype=a.dtype))
    torch.testing.assert_close(metrics.ssim(a, b), metrics.ssim(b, a))
    one_by_one = torch.cat([metrics.ssim(a[i:i + 1], b[i:i + 1]) for i in range(batch)])
    torch.testing.assert_close(metrics.ssim(a, b), one_by_one)
    assert (metrics.ssim(a, b) <= 1 + 1e-12).all()


def test_ssim_abs_max_ignores_a_sign_flip_and_matches_skimage():
    a, b = make_pair("image", (3, 16, 16), seed=1)
    a, b = a - 0.5, b - 0.5  # signed maps
    ta, tb = torch.tensor(a), torch.tensor(b)
    torch.testing.assert_close(metrics.ssim_abs_max(ta, -tb), metrics.ssim_abs_max(ta, tb))
    assert (metrics.ssim(ta, -tb) < metrics.ssim_abs_max(ta, -tb)).all()
    expected = [max(skimage_ssim(a[i], b[i], False), skimage_ssim(a[i], -b[i], False)) for i in range(3)]
    np.testing.assert_allclose(metrics.ssim_abs_max(ta, tb).numpy(), expected, atol=1e-4, rtol=0)


@SETTINGS
@given(batch=st.integers(1, 4), size=st.integers(3, 200), ties=st.booleans(), seed=st.integers(0, 2**31))
def test_pcc_spearman_mse_match_numpy_and_scipy(batch, size, ties, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, size))
    b = a + rng.standard_normal((batch, size))
    if ties:  # many tied values: average ranks are needed to match scipy
        a, b = np.round(a), np.round(b * 2)
    a[:, 0], b[:, 0] = 5.0, -5.0  # never constant
    ta, tb = torch.tensor(a), torch.tensor(b)
    np.testing.assert_allclose(metrics.pcc(ta, tb).numpy(), [np.corrcoef(a[i], b[i])[0, 1] for i in range(batch)],
                               atol=1e-10)
    np.testing.assert_allclose(metrics.spearman(ta, tb).numpy(),
                               [spearmanr(a[i], b[i]).statistic for i in range(batch)], atol=1e-10)
    np.testing.assert_allclose(metrics.mse(ta, tb).numpy(), ((a - b) ** 2).mean(axis=1), atol=1e-12)


def test_average_ranks_share_ties():
    ranks = metrics.average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]]))
    torch.testing.assert_close(ranks, torch.tensor([[4.0, 1.0, 4.0, 2.0, 4.0]], dtype=torch.float64))


def test_similarities_flatten_images_and_are_batched():
    a, b = (torch.tensor(v) for v in make_pair("image", (3, 2, 5, 6), seed=2))
    for fn in (metrics.pcc, metrics.spearman, metrics.mse):
        batched = fn(a, b)
        assert batched.shape == (3,)
        torch.testing.assert_close(batched, torch.cat([fn(a[i:i + 1], b[i:i + 1]) for i in range(3)]))
        torch.testing.assert_close(fn(a, b), fn(a.flatten(1), b.flatten(1)))
    torch.testing.assert_close(metrics.pcc(a, 3 * a + 1), torch.ones(3, dtype=a.dtype))
    torch.testing.assert_close(metrics.pcc(a, -a), -torch.ones(3, dtype=a.dtype))


def test_pcc_of_a_constant_map_is_nan_like_numpy():
    a = torch.ones(1, 10, dtype=torch.float64)
    assert torch.isnan(metrics.pcc(a, torch.arange(10.0, dtype=torch.float64)[None])).all()


def test_normalize_map_sums_to_one_and_rejects_zero_sum():
    m = torch.rand(4, 8, 8) + 0.1
    normalized = metrics.normalize_map(m)
    torch.testing.assert_close(normalized.sum(dim=(1, 2)), torch.ones(4))
    torch.testing.assert_close(normalized * m.sum(dim=(1, 2), keepdim=True), m)
    m[2] = 0.0
    with pytest.raises(ValueError, match=r"m sums to zero for examples \[2\]"):
        metrics.normalize_map(m)
    signed = torch.tensor([[1.0, -1.0, 2.0, -2.0]])
    with pytest.raises(ValueError, match="sums to zero"):
        metrics.normalize_map(signed)


@pytest.mark.parametrize("fn", [metrics.ssim, metrics.ssim_abs_max, metrics.pcc, metrics.mse, metrics.spearman])
def test_errors_name_the_argument(fn):
    a = torch.rand(2, 9, 9)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        fn(a, torch.rand(2, 9, 8))
    bad = a.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="b contains NaN"):
        fn(a, bad)
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        fn(a.numpy(), a)


def test_ssim_errors():
    a = torch.rand(2, 6, 9)
    with pytest.raises(ValueError, match="win_size=7 exceeds"):
        metrics.ssim(a, a)
    with pytest.raises(ValueError, match="odd"):
        metrics.ssim(a, a, win_size=4)
    with pytest.raises(ValueError, match="odd integer >= 3"):
        metrics.ssim(a, a, win_size=1)
    with pytest.raises(ValueError, match="data_range must be positive"):
        metrics.ssim(torch.ones(1, 8, 8), torch.ones(1, 8, 8))
    with pytest.raises(ValueError, match="must have 3..4 dimensions"):
        metrics.ssim(torch.rand(2, 64), torch.rand(2, 64))


def test_output_change_and_class_kept_on_constructed_logits():
    out = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out_adv = torch.tensor([[5.0, 3.0, 3.0], [0.0, 1.0, 3.0]])
    change = metrics.output_change(out_adv, out)
    torch.testing.assert_close(change["logits"], torch.tensor([27.0 ** 0.5, 3.0]))
    # example 0: all logits shifted by 3 -> softmax unchanged; example 1: class changes
    torch.testing.assert_close(change["softmax"][0], torch.tensor(0.0), atol=1e-6, rtol=0)
    expected = (out_adv[1].softmax(0) - out[1].softmax(0)).norm()
    torch.testing.assert_close(change["softmax"][1], expected)
    assert metrics.class_kept(out_adv, out).tolist() == [True, False]
    with pytest.raises(ValueError, match="out_adv and out must have the same shape"):
        metrics.class_kept(out_adv, out[:, :2])


class ThresholdedSum(torch.nn.Module):
    """Logits [0, sum_i w_i x_i - c]: class 1 while the weighted evidence exceeds c."""

    def __init__(self, weights: torch.Tensor, c: float):
        super().__init__()
        self.weights, self.c = weights, c

    def forward(self, x):
        score = (self.weights * x).flatten(1).sum(dim=1) - self.c
        return torch.stack([torch.zeros_like(score), score], dim=1)


def morf_oracle(contributions: np.ndarray, counts: list[int], c: float) -> list[float]:
    """Accuracy when the k largest contributions are removed (baseline 0), for each k."""
    ordered = -np.sort(-contributions.reshape(len(contributions), -1), axis=1)
    remaining = ordered.sum(axis=1, keepdims=True) - np.concatenate(
        [np.zeros((len(ordered), 1)), np.cumsum(ordered, axis=1)], axis=1)
    return [float((remaining[:, k] > c).mean()) for k in counts]


def test_pixel_flipping_matches_the_oracle_and_beats_random_maps():
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(1, 3, 6, 6, generator=generator, dtype=torch.float64)
    x = torch.rand(40, 3, 6, 6, generator=generator, dtype=torch.float64)
    model = ThresholdedSum(weights, c=14.0)
    labels = torch.ones(40, dtype=torch.long)
    relevance = (weights * x).sum(dim=1)  # exact per-pixel contribution, all channels together
    fractions, accuracy = metrics.pixel_flipping(model, x, labels, relevance, steps=13, batch_size=7)
    counts = [round(f * 36) for f in np.linspace(0, 1, 13)]
    np.testing.assert_allclose(fractions.numpy(), np.array(counts) / 36)
    np.testing.assert_allclose(accuracy.numpy(), morf_oracle(relevance.numpy(), counts, 14.0))
    assert accuracy[0] == 1.0 and accuracy[-1] == 0.0
    assert (accuracy.diff() <= 0).all()

    _, one_batch = metrics.pixel_flipping(model, x, labels, relevance, steps=13, batch_size=1000)
    torch.testing.assert_close(one_batch, accuracy)
    random_curves = torch.stack([
        metrics.pixel_flipping(model, x, labels, metrics.random_maps(relevance, generator), steps=13)[1]
        for _ in range(5)])
    assert (accuracy <= random_curves.min(dim=0).values).all()
    assert accuracy.sum() < random_curves.mean(dim=0).sum() - 1.0


def test_flip_most_relevant_sets_every_channel_to_the_baseline():
    x = torch.rand(2, 3, 4, 4)
    maps = torch.rand(2, 4, 4)
    ranks = metrics.relevance_ranks(maps)
    baseline = torch.tensor([-1.0, -2.0, -3.0])
    flipped = metrics.flip_most_relevant(x, ranks, 5, baseline)
    top5 = maps.flatten(1).topk(5, dim=1).indices
    mask = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, top5, True).view(2, 1, 4, 4).expand_as(x)
    torch.testing.assert_close(flipped[~mask], x[~mask])
    torch.testing.assert_close(flipped, torch.where(mask, baseline.view(1, 3, 1, 1), x))


def test_pixel_flipping_errors():
    model = ThresholdedSum(torch.ones(1, 1, 4, 4), c=0.0)
    x, labels = torch.rand(2, 1, 4, 4), torch.ones(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"maps must be \[B, H, W\]"):
        metrics.pixel_flipping(model, x, labels, torch.rand(2, 4, 5), steps=3)
    with pytest.raises(ValueError, match="labels must be"):
        metrics.pixel_flipping(model, x, labels[:1], torch.rand(2, 4, 4), steps=3)
    with pytest.raises(ValueError, match="maps contains NaN"):
        metrics.pixel_flipping(model, x, labels, torch.full((2, 4, 4), float("nan")), steps=3)
