"""Linear maps z = A_W(x_1..x_n) + b of the propagation engine (conv, dense, diagonal, sum, pool, affine).

Rules evaluate A with modified weights (W+, W-, W^2, a pattern) and apply the exact transpose A^T, both
differentiable in x, the signal and W; batch norm is folded into the map before it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn



# --------------------------------------------------------------------------------------------
# Linear maps: z = A_W(x_1..x_n) + b. Rules evaluate A with modified weights (W+, W-, W^2, a
# pattern) and apply the exact transpose A^T, both differentiable in x, the signal and W.
# --------------------------------------------------------------------------------------------
class LinearMap:
    """A layer linear in its inputs; ``weight`` is the W whose signs and patterns rules use."""

    dense = False  # nn.Linear (LRP-CMP's epsilon layers)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, inputs: list[torch.Tensor]):
        self.weight, self.bias = weight, bias
        self.in_shapes = [tuple(t.shape[1:]) for t in inputs]

    def apply(self, xs: list[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        """A_weight(xs), without bias."""
        raise NotImplementedError

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        z = self.apply(xs, self.weight)
        return z if self.bias is None else z + self._bias_view(z)

    def _bias_view(self, z):
        return self.bias.view(-1, *([1] * (z.dim() - 2)))

    def transpose(self, s: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
        """A_weight^T s for each input: the gradient of <A_weight(u), s> in u, with the graph kept."""
        dummies = [s.new_zeros((s.shape[0],) + shape, requires_grad=True) for shape in self.in_shapes]
        return list(torch.autograd.grad(self.apply(dummies, weight), dummies, s, create_graph=True))


class ConvMap(LinearMap):
    def __init__(self, module: nn.Module, weight, bias, inputs):
        super().__init__(weight, bias, inputs)
        self.module = module
        self.dims = module.weight.dim() - 2
        self.closed_form = module.padding_mode == "zeros" and not isinstance(module.padding, str)

    def apply(self, xs, weight):
        return self.module._conv_forward(xs[0], weight, None)

    def transpose(self, s, weight):
        if not self.closed_form:
            return super().transpose(s, weight)
        m = self.module
        in_size = self.in_shapes[0][1:]
        out_pad = [i - ((o - 1) * st - 2 * p + d * (k - 1) + 1) for i, o, st, p, d, k in
                   zip(in_size, s.shape[2:], m.stride, m.padding, m.dilation, weight.shape[2:])]
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.dims - 1]
        return [conv_t(s, weight, None, m.stride, m.padding, out_pad, m.groups, m.dilation)]


class DenseMap(LinearMap):
    dense = True

    def apply(self, xs, weight):
        return F.linear(xs[0], weight)

    def _bias_view(self, z):
        return self.bias

    def transpose(self, s, weight):
        return [s @ weight]


class DiagonalMap(LinearMap):
    """A batch norm that follows no conv/linear: z = a x + b per channel (dim 1)."""

    def apply(self, xs, weight):
        return xs[0] * weight.view(-1, *([1] * (xs[0].dim() - 2)))

    def transpose(self, s, weight):
        return [s * weight.view(-1, *([1] * (s.dim() - 2)))]


class SumMap(LinearMap):
    """A residual addition z = w_1 a + w_2 b (w = (1, alpha) for torch.add)."""

    def apply(self, xs, weight):
        return weight[0] * xs[0] + weight[1] * xs[1]

    def transpose(self, s, weight):
        return [weight[0] * s, weight[1] * s]


class PoolMap(LinearMap):
    """Average / adaptive-average pooling as z = w * pool(x) with w = 1."""

    def __init__(self, pool: Callable, weight, inputs):
        super().__init__(weight, None, inputs)
        self.pool = pool

    def apply(self, xs, weight):
        return weight * self.pool(xs[0])


class AffineMap(LinearMap):
    """An elementwise z = a x + b with constant (broadcast) a and b; the transpose sums a s back to
    the input's shape."""

    def apply(self, xs, weight):
        return xs[0] * weight

    def _bias_view(self, z):
        return self.bias

    def transpose(self, s, weight):
        return [(s * weight).sum_to_size((s.shape[0],) + self.in_shapes[0])]

    def map_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bounds of z for lower <= x <= upper (swapped where a < 0)."""
        first, second = self.forward([lower]), self.forward([upper])
        return torch.minimum(first, second), torch.maximum(first, second)


def fold_batchnorm(weight, bias, bn: nn.Module):
    """Fold an eval-mode batch norm into the preceding layer: returns (W', b')."""
    scale, shift = batchnorm_affine(bn)
    folded_w = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    folded_b = shift if bias is None else bias * scale + shift
    return folded_w, folded_b


def batchnorm_affine(bn: nn.Module):
    """BN(x) = scale * x + shift with the running statistics."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift

