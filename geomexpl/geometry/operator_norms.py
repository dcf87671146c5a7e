"""Operator-norm bounds of the linear layers of a network (used by the constants of Theorem 1).

* Linear: |W|_F and |W|_2 exactly.
* ConvNd (zero padding): |A|_F of the unrolled operator exactly; |A|_2 bounded by the largest
  spectral norm of the DFT of the kernel on the padded grid (Sedghi et al. 2019).
* BatchNorm (eval): the diagonal scale gamma / sqrt(var + eps). Avg-pooling: a depthwise conv.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def batchnorm_scale(name: str, bn: nn.Module) -> torch.Tensor:
    if bn.training or bn.running_var is None:
        raise ValueError(f"layer {name!r} ({type(bn).__name__}) must be in eval mode with running "
                         "statistics (call model.eval()): only then is it a fixed affine map")
    scale = 1 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return scale * bn.weight.detach().double() if bn.weight is not None else scale



def pool_as_conv(name: str, pool: nn.Module, x_in: torch.Tensor):
    channels, size = x_in.shape[1], x_in.shape[2:]
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        out = [o if o is not None else s for o, s in zip(nn.modules.utils._pair(pool.output_size), size)]
        if any(s % o for s, o in zip(size, out)):
            raise ValueError(f"layer {name!r}: AdaptiveAvgPool2d needs input size {tuple(size)} divisible "
                             f"by its output size {tuple(out)}")
        kernel = stride = tuple(s // o for s, o in zip(size, out))
        padding = (0, 0)
    else:
        if pool.ceil_mode or (pool.padding and not pool.count_include_pad):
            raise ValueError(f"layer {name!r}: AvgPool2d with ceil_mode or count_include_pad=False is "
                             "not a fixed convolution; not supported")
        kernel = nn.modules.utils._pair(pool.kernel_size)
        stride = nn.modules.utils._pair(pool.stride or pool.kernel_size)
        padding = nn.modules.utils._pair(pool.padding)
    divisor = pool.divisor_override if getattr(pool, "divisor_override", None) else math.prod(kernel)
    weight = torch.full((channels, 1, *kernel), 1.0 / divisor, dtype=torch.float64, device=x_in.device)
    conv = nn.Conv2d(channels, channels, kernel, stride=stride, padding=padding, groups=channels, bias=False)
    return weight, conv, x_in



def weight_norms(weight: torch.Tensor, module: nn.Module, x_in: torch.Tensor) -> tuple[float, float]:
    """(|A|_F, upper bound of |A|_2) of the linear map of a Linear or ConvNd with this weight."""
    if isinstance(module, nn.Linear):
        return float(weight.norm()), float(torch.linalg.matrix_norm(weight, ord=2))
    if module.padding_mode != "zeros":
        raise ValueError(f"{type(module).__name__} with padding_mode={module.padding_mode!r} is not "
                         "supported (zero padding only)")
    conv = CONVS[type(module)]
    ones = torch.ones(1, *x_in.shape[1:], dtype=weight.dtype, device=weight.device)
    squares = conv(ones, weight ** 2, None, module.stride, module.padding, module.dilation, module.groups)
    fro = float(squares.sum().sqrt())
    spatial = x_in.shape[2:]
    k = weight.shape[2:]
    dil = module.dilation
    pads = ([0] * len(k) if module.padding == "valid" else
            [d * (kk - 1) for d, kk in zip(dil, k)] if module.padding == "same" else
            [2 * p for p in module.padding])
    grid = [n + p for n, p in zip(spatial, pads)]
    dilated = weight.new_zeros(*weight.shape[:2], *[d * (kk - 1) + 1 for d, kk in zip(dil, k)])
    dilated[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in dil)] = weight
    g = module.groups
    co, ci = weight.shape[0] // g, weight.shape[1]
    full = weight.new_zeros(weight.shape[0], ci * g, *dilated.shape[2:])
    for i in range(g):
        full[i * co:(i + 1) * co, i * ci:(i + 1) * ci] = dilated[i * co:(i + 1) * co]
    dims = tuple(range(2, full.dim()))
    symbol = torch.fft.rfftn(full, s=grid, dim=dims).movedim(0, -1).movedim(0, -1)  # [..., Co, Ci]
    spec = float(torch.linalg.matrix_norm(symbol, ord=2).max())
    return fro, spec
