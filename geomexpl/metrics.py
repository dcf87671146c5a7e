"""Similarity of maps and images, output change and pixel flipping (Dombrowski et al. 2019).

Sec. 2.2 compares target and manipulated maps, and original and manipulated images, with SSIM, the
Pearson correlation (PCC) and the MSE; maps are normalised to sum one and images lie in [0, 1].
Sixt et al. (2020, sec. 5) take max(SSIM(a, b), SSIM(a, -b)) for maps whose sign may flip.
Supplement B reports ||g(x_adv) - g(x)|| and whether the class is kept; supplement D.1 the
pixel-flipping (MoRF) curve. Every function is batched: inputs are [B, ...], results [B], on the
inputs' device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from geomexpl.checks import check_tensor

SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a, b, names: tuple[str, str], *, min_dim: int = 2, max_dim: int | None = None):
    check_tensor(a, names[0], min_dim=min_dim, max_dim=max_dim)
    check_tensor(b, names[1], min_dim=min_dim, max_dim=max_dim)
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def normalize_map(m: torch.Tensor) -> torch.Tensor:
    """m / sum(m) per example, so every map sums to one (sec. 2.2).

    Raises when a map sums to zero to working precision (|sum m| <= eps * sum |m|, which includes
    the all-zero map): such a map has no normalised form.
    """
    check_tensor(m, "m", min_dim=2)
    dims = tuple(range(1, m.dim()))
    total = m.sum(dim=dims, keepdim=True)
    scale = m.abs().sum(dim=dims, keepdim=True)
    degenerate = (total.abs() <= torch.finfo(m.dtype).eps * scale).flatten()
    if degenerate.any():
        bad = degenerate.nonzero().flatten().tolist()
        raise ValueError(f"m sums to zero for examples {bad}; a map must have a nonzero sum to be normalised")
    return m / total


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example: mean_i (a_i - b_i)^2."""
    _check_pair(a, b, ("a", "b"))
    return (a - b).pow(2).flatten(1).mean(dim=1)


def pcc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per example of the flattened inputs (as numpy.corrcoef).

    An example with zero variance has no correlation: its entry is NaN, as numpy gives.
    """
    _check_pair(a, b, ("a", "b"))
    return _pearson(a.flatten(1), b.flatten(1))


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N along dim 1 of [B, N] values; tied values share their average rank (float64)."""
    check_tensor(v, "v", min_dim=2, max_dim=2)
    batch, n = v.shape
    sorted_v, order = v.sort(dim=1, stable=True)
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    starts[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = starts.cumsum(dim=1) - 1 + torch.arange(batch, device=v.device)[:, None] * n
    group = group.flatten()
    position = torch.arange(1, n + 1, dtype=torch.float64, device=v.device).repeat(batch)
    sums = torch.zeros(batch * n, dtype=torch.float64, device=v.device).index_add_(0, group, position)
    counts = torch.zeros_like(sums).index_add_(0, group, torch.ones_like(position))
    sorted_ranks = (sums[group] / counts[group]).view(batch, n)
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per example: PCC of the average ranks (as scipy.stats.spearmanr)."""
    _check_pair(a, b, ("a", "b"))
    rho = _pearson(average_ranks(a.flatten(1)), average_ranks(b.flatten(1)))
    return rho.to(a.dtype)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range=None, win_size: int = 7) -> torch.Tensor:
    """Mean structural similarity per example of [B, H, W] maps or [B, C, H, W] images.

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    C1 = (K1 R)^2, C2 = (K2 R)^2 (Wang et al. 2004), averaged over all windows.

    Equal to ``skimage.metrics.structural_similarity`` with its defaults and the same
    ``data_range`` (tested to 1e-4): a ``win_size`` x ``win_size`` uniform window (7 by default),
    K1 = 0.01, K2 = 0.03, sample covariances (``use_sample_covariance=True``, factor N/(N-1)) and the
    mean taken over the valid windows only (skimage crops ``(win_size - 1) // 2`` border pixels,
    which is exactly ``avg_pool2d`` without padding). [B, C, H, W] inputs match
    ``channel_axis=0`` per example: SSIM per channel with one data range, then the channel mean.

    ``data_range`` R: a number or a [B] tensor; by default, per example, the joint range of the
    pair, max(a.max(), b.max()) - min(a.min(), b.min()) over all channels. It is computed in
    float64 (the variances are differences of means) and returned in the inputs' dtype.
    """
    _check_pair(a, b, ("a", "b"), min_dim=3, max_dim=4)
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size}")
    height, width = a.shape[-2:]
    if win_size > min(height, width):
        raise ValueError(f"win_size={win_size} exceeds the image extent {height}x{width}; "
                         f"pass an odd win_size <= {min(height, width)}")
    batch = a.shape[0]
    x = a.to(torch.float64).reshape(batch, -1, height, width)
    y = b.to(torch.float64).reshape(batch, -1, height, width)
    if data_range is None:
        high = torch.maximum(x.flatten(1).amax(dim=1), y.flatten(1).amax(dim=1))
        low = torch.minimum(x.flatten(1).amin(dim=1), y.flatten(1).amin(dim=1))
        rng = high - low
    else:
        rng = torch.as_tensor(data_range, dtype=torch.float64, device=a.device).flatten()
        if rng.numel() not in (1, batch):
            raise ValueError(f"data_range must be a number or a [B] = [{batch}] tensor, got {rng.numel()} values")
        rng = rng.expand(batch)
    if (rng <= 0).any():
        bad = (rng <= 0).nonzero().flatten().tolist()
        raise ValueError(f"data_range must be positive; it is zero or negative for examples {bad} "
                         "(both inputs constant and equal?); pass data_range explicitly")
    rng = rng.view(batch, 1, 1, 1)
    c1, c2 = (SSIM_K1 * rng) ** 2, (SSIM_K2 * rng) ** 2

    def window_mean(t):
        return F.avg_pool2d(t, kernel_size=win_size, stride=1)

    cov_norm = win_size ** 2 / (win_size ** 2 - 1)
    mu_x, mu_y = window_mean(x), window_mean(y)
    var_x = cov_norm * (window_mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (window_mean(y * y) - mu_y * mu_y)
    cov_xy = cov_norm * (window_mean(x * y) - mu_x * mu_y)
    s = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
         / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return s.mean(dim=(2, 3)).mean(dim=1).to(a.dtype)


def ssim_abs_max(a: torch.Tensor, b: torch.Tensor, data_range=None, win_size: int = 7) -> torch.Tensor:
    """max(SSIM(a, b), SSIM(a, -b)) per example: Sixt et al.'s SSIM for maps whose sign may flip.

    Each of the two SSIMs takes ``data_range`` as :func:`ssim` does (by default its own pair's range).
    """
    return torch.maximum(ssim(a, b, data_range, win_size), ssim(a, -b, data_range, win_size))


def output_change(out_adv: torch.Tensor, out: torch.Tensor) -> dict[str, torch.Tensor]:
    """||g(x_adv) - g(x)||_2 per example on the logits and on the softmax (supplement B).

    Returns ``{"logits": [B], "softmax": [B]}``; both inputs are [B, K] logits.
    """
    _check_pair(out_adv, out, ("out_adv", "out"), min_dim=2, max_dim=2)
    return {
        "logits": (out_adv - out).norm(dim=1),
        "softmax": (out_adv.softmax(dim=1) - out.softmax(dim=1)).norm(dim=1),
    }


def class_kept(out_adv: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """argmax g(x_adv) == argmax g(x) per example, as a bool [B]."""
    _check_pair(out_adv, out, ("out_adv", "out"), min_dim=2, max_dim=2)
    return out_adv.argmax(dim=1) == out.argmax(dim=1)


def random_maps(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random relevance maps shaped like ``like``: the random baseline of pixel flipping."""
    check_tensor(like, "like", min_dim=1)
    device = generator.device if generator is not None else like.device
    return torch.rand(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def relevance_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel of [B, H, W] maps, 0 = most relevant (ties keep pixel order)."""
    check_tensor(maps, "maps", min_dim=3, max_dim=3)
    flat = maps.flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=maps.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions).view_as(maps)


def flip_most_relevant(x: torch.Tensor, ranks: torch.Tensor, count: int, baseline=0.0) -> torch.Tensor:
    """x with its ``count`` most relevant pixels set to ``baseline`` in every channel.

    ``ranks`` [B, H, W] from :func:`relevance_ranks`; ``baseline`` a number, a per-channel [C]
    tensor or anything broadcasting to x (e.g. a blurred copy of x).
    """
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    if base.dim() == 1:
        base = base.view(1, -1, 1, 1)
    return torch.where((ranks < count).unsqueeze(1), base, x)


def pixel_flipping(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor,
                   steps: int = 11, baseline=0.0, batch_size: int = 256,
                   per_example: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MoRF pixel-flipping curve (supplement D.1, Fig. 7 and 21).

    Pixels of every image are sorted by its relevance map [B, H, W], most relevant first, and an
    increasing number k of them is set to ``baseline`` in all channels; at each step the accuracy
    of ``model`` on the whole set is measured. A faster drop means a better explanation.

    Returns ``fractions`` [S] (k / (H W), k = round(f H W) for f = linspace(0, 1, steps)) and
    ``accuracies`` [S], or with ``per_example`` each image's correctness [B, S] (0/1; its mean over
    images is the accuracy), for intervals over images. ``model`` is called as it is (put it in eval mode), without gradients.
    """
    check_tensor(x, "x", min_dim=4, max_dim=4)
    check_tensor(maps, "maps", min_dim=3, max_dim=3)
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"maps must be [B, H, W] = {(x.shape[0], *x.shape[2:])} to match x "
                         f"{tuple(x.shape)}, got {tuple(maps.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (x.shape[0],):
        raise ValueError(f"labels must be a [B] = [{x.shape[0]}] tensor of class indices")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (0% and 100% flipped), got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pixels = maps[0].numel()
    counts = torch.linspace(0, pixels, steps).round().long().tolist()
    correct = torch.zeros(x.shape[0], steps, dtype=torch.long, device=x.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            ranks = relevance_ranks(maps[chunk].to(x.device))
            for step, count in enumerate(counts):
                logits = model(flip_most_relevant(x[chunk], ranks, count, baseline))
                correct[chunk, step] = (logits.argmax(dim=1) == labels[chunk].to(x.device)).long()
    fractions = torch.tensor(counts, dtype=x.dtype, device=x.device) / pixels
    correct = correct.to(x.dtype)
    return fractions, (correct if per_example else correct.mean(0))
