"""Target maps h^t for the attack, each [B, H, W], non-negative and summing to one per example."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from geomexpl.checks import check_tensor
from geomexpl.explain import explain, relevance_map


def explanation_target(model, x_other: torch.Tensor, method: str, target=None, **options) -> torch.Tensor:
    """The map of another image, as in the paper's setup (sec. 2.3): relevance_map(h(x_other))."""
    return relevance_map(explain(model, x_other.detach(), method, target, **options))


def mask_target(mask, size: tuple[int, int], batch: int | None = None, floor: float = 0.0) -> torch.Tensor:
    """An arbitrary mask or image ([H, W], [C, H, W] or [B, C?, H, W]) as target maps of ``size``.

    Channels are summed as |.|, the result is resized bilinearly, ``floor`` (a fraction of the mean)
    is added so no pixel has exactly zero relevance, and each map is normalised to sum one.
    """
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).float()
    check_tensor(m, "mask", min_dim=2, max_dim=4)
    m = m.abs()
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m.sum(0, keepdim=True)[None] if batch is None or m.shape[0] != batch else m[:, None]
    else:
        m = m.sum(1, keepdim=True)
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False).clamp_min(0)[:, 0]
    if batch is not None and m.shape[0] == 1:
        m = m.expand(batch, *size)
    m = m + floor * m.flatten(1).mean(1).view(-1, 1, 1)
    total = m.flatten(1).sum(1)
    if (total <= 0).any():
        raise ValueError("mask has no positive entry: a target map needs some relevance")
    return m / total.view(-1, 1, 1)


def text_target(text: str, size: tuple[int, int], batch: int | None = None, fontsize: float | None = None,
                floor: float = 0.0) -> torch.Tensor:
    """``text`` rendered into a map, as in the paper's Figure 1 ("this explanation was manipulated").

    Words are wrapped onto the number of lines that allows the largest font; rendering is done at 8x resolution with
    matplotlib's Agg canvas and then area-averaged down to ``size``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not text.strip():
        raise ValueError("text_target needs a non-empty text")
    scale = 8
    h, w = size[0] * scale, size[1] * scale
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    words = text.split()
    layouts = [_wrap(words, n) for n in range(1, len(words) + 1)]
    font = [min(0.72 * h / len(lines), 1.6 * w / max(map(len, lines))) for lines in layouts]
    lines = layouts[int(np.argmax(font))]
    size_pt = fontsize or max(font)
    fig.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=size_pt, weight="bold",
             linespacing=1.05)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), dtype=np.float32)[..., :3]
    ink = torch.from_numpy(1.0 - rgba.mean(-1) / 255.0)[None, None]
    ink = F.avg_pool2d(ink, scale)[0]
    return mask_target(ink, size, batch=batch, floor=floor)


def _wrap(words: list[str], n_lines: int) -> list[str]:
    per_line = -(-len(words) // n_lines)
    return [" ".join(words[i:i + per_line]) for i in range(0, len(words), per_line)]
