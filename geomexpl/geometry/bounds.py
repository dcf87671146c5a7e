"""The constants of Theorem 1: C~ of the Hessian bound (supplement E.1, eq. (9)-(10)) and c.

Proof sketch (supplement E.1, step 1). Write the network between two nonlinearities as linear maps
W^(1), ..., W^(L) (biases do not enter derivatives). With a^(m) = sp_beta(W^(m) a^(m-1)),
u_m = d out / d a^(m) and J_m = d a^(m) / d x, differentiating the Jacobian once more gives

    H = sum_m (W^(m) J_{m-1})^T diag(beta sp''(z_m) * u_m) (W^(m) J_{m-1}),   0 < sp'' <= 1/4,

hence, with |J_{m-1}| <= prod_{l<m} |W^(l)| and |u_m| <= prod_{l>m} |W^(l)|,

    |H|_F <= beta/4 * C~ <= beta C~,  C~ = sum_m prod_{l>m} |W^(l)|_F |W^(m)|_F^2 prod_{l<m} |W^(l)|_F^2

(eq. (10); the sum runs over layers m followed by a softplus). The paper keeps beta C~ (it bounds
sp'' by 1); we return eq. (10) exactly. Because |A B C|_F <= |A|_2 |B|_F |C|_2, the same bound holds
with spectral norms everywhere (``norm='spectral'``), which is much tighter for conv nets.

Norms used for each linear map (every one an upper bound, so C~ stays a valid bound):
* Linear: |W|_F and |W|_2 exactly.
* ConvNd (zero padding): |A|_F of the unrolled operator exactly, sum(conv(ones, W**2)) = sum over
  output positions of the squared kernel taps that hit the input (padding taps excluded).
  |A|_2 <= max_w |W^(w)|_2 over the DFT W^(w) of the (dilated) kernel on the padded grid: the conv is
  a row/column restriction of the circular conv on that grid, whose singular values are those of the
  W^(w) (Sedghi et al. 2019); restricting rows/columns never increases the spectral norm.
* BatchNorm (eval): the affine map diag(gamma / sqrt(var + eps)) is folded into the preceding
  Linear/Conv, else taken as a diagonal map. AvgPool2d / AdaptiveAvgPool2d: a depthwise conv.
* Several maps between two nonlinearities: |A_k..A_1|_F <= min_i |A_i|_F prod_{j != i} |A_j|_2.

The layer order is traced with forward hooks on one random input, and each layer's input must equal
the previous layer's output: residual or concatenating models are refused, not mis-bounded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from geomexpl.checks import check_tensor
from geomexpl.geometry.derivatives import HessianVectorProduct, ScalarFunction, hessian, value_and_gradient
from geomexpl.geometry.graph_bound import graph_curvature_constant
from geomexpl.geometry.lanczos import batched_lanczos
from geomexpl.geometry.operator_norms import CONVS, batchnorm_scale, pool_as_conv, weight_norms
from geomexpl.nets.softplus import unwrap

_SHAPE_ONLY = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORMS = ("frobenius", "spectral")


def curvature_constant(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                       norm: str = "frobenius") -> float:
    """C~ of supplement eq. (10), so that the Hessian of any output is bounded by beta C~ (eq. (9)).

    ``norm='frobenius'``: eq. (10) itself for a chain of Linear/Conv/BatchNorm/AvgPool layers and
    softplus nonlinearities (nn.Softplus, or the ReLUs of a ``geomexpl.nets.softplus_twin``):
    |H|_F <= beta C~. ``norm='spectral'``: any graph with residual additions, concatenations and
    max-pools (:mod:`geomexpl.geometry.graph_bound`): |H|_2 <= beta C~ / 4, which is what bounds the
    principal curvatures, |kappa| <= |H|_2 / |grad g|. ``input_shape``
    (without batch) is needed unless the first layer is Linear. See the module docstring for the
    norms used."""
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if norm == "spectral":
        return graph_curvature_constant(model, input_shape or _linear_input_shape(unwrap(model)[0]))
    inner, beta = unwrap(model)
    layers = _trace(model, inner, input_shape)
    blocks: list[list[tuple[float, float]]] = [[]]
    pending: list = []                         # Linear/Conv (weight, module, input) awaiting BN fold
    for name, module, x_in, _ in layers:
        if isinstance(module, nn.Softplus) or (isinstance(module, nn.ReLU) and beta is not None):
            blocks[-1] += [weight_norms(*p) for p in pending]
            if not blocks[-1]:                  # two nonlinearities in a row: W = identity
                blocks[-1].append((math.sqrt(x_in[0].numel()), 1.0))
            blocks.append([])
            pending = []
        elif isinstance(module, nn.ReLU):
            raise ValueError(f"layer {name!r} is ReLU, which is not smooth (Theorem 1 covers softplus "
                             "networks): pass geomexpl.nets.softplus_twin(model, beta)")
        elif isinstance(module, (nn.Linear, *CONVS)):
            pending.append((module.weight.detach().double(), module, x_in))
        elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            pending.append(pool_as_conv(name, module, x_in))
        elif isinstance(module, _BATCHNORMS):
            scale = batchnorm_scale(name, module)
            if pending and pending[-1][0].shape[0] == scale.numel():
                weight, conv, conv_in = pending[-1]
                pending[-1] = (weight * scale.view(-1, *[1] * (weight.dim() - 1)), conv, conv_in)
            else:
                blocks[-1] += [weight_norms(*p) for p in pending]
                pending = []
                positions = x_in[0].numel() // scale.numel()
                blocks[-1].append((math.sqrt(positions) * float(scale.norm()), float(scale.abs().max())))
        elif isinstance(module, _SHAPE_ONLY):
            blocks[-1] += [weight_norms(*p) for p in pending]
            pending = []
            if module.training and isinstance(module, nn.modules.dropout._DropoutNd):
                raise ValueError(f"layer {name!r} (Dropout) is in training mode; call model.eval()")
            blocks[-1].append((math.sqrt(x_in[0].numel()), 1.0))
        else:
            raise ValueError(f"layer {name!r} ({type(module).__name__}) is not supported by "
                             "curvature_constant: only Linear, Conv1d/2d/3d, BatchNorm (eval), "
                             "AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout and softplus nonlinearities")
    blocks[-1] += [weight_norms(*p) for p in pending]
    if not blocks[-1]:
        blocks.pop()
        smooth = len(blocks)
    else:
        smooth = len(blocks) - 1
    if smooth == 0:
        return 0.0                              # affine network: H = 0
    sizes = [_block_norm(b, norm) for b in blocks]
    return sum(math.prod(sizes[m + 1:]) * sizes[m] ** 2 * math.prod(s ** 2 for s in sizes[:m])
               for m in range(smooth))


def min_gradient_norm(f: ScalarFunction, path: torch.Tensor) -> torch.Tensor:
    """c of Theorem 1 along a path: min_t |grad f(x_t)|, [T, B, ...] -> [B]."""
    check_tensor(path, "path", min_dim=2)
    _, grad = value_and_gradient(f, path.flatten(0, 1))
    return grad.flatten(1).norm(dim=1).view(path.shape[:2]).amin(0)


@dataclass
class HessianBound:
    """hessian_norm [B] (|H|_F if exact, else the lower bound sqrt(sum of k squared top eigenvalues)),
    bound = beta * constant, holds [B]; with exact=False a violation is proven, a pass only likely."""

    hessian_norm: torch.Tensor
    bound: float
    holds: torch.Tensor
    exact: bool


def check_hessian_bound(f: ScalarFunction, x: torch.Tensor, beta: float, constant: float,
                        max_dense_dim: int = 4096, k: int = 6) -> HessianBound:
    """Check supplement eq. (9), |H f(x)|_F <= beta C~, at each example of x."""
    check_tensor(x, "x", min_dim=1)
    d = x[0].numel()
    if d <= max_dense_dim:
        norms = hessian(f, x, max_dim=max_dense_dim).double().flatten(1).norm(dim=1)
    else:
        product = HessianVectorProduct(f, x)
        res = batched_lanczos(lambda v: product(v.view_as(x)).flatten(1), d, x.shape[0], min(k, d),
                      tol=1e-6, maxiter=20 * k + 100, device=x.device)
        norms = res.values.norm(dim=1)
    bound = float(beta) * float(constant)
    return HessianBound(norms.cpu(), bound, (norms <= bound).cpu(), d <= max_dense_dim)


def _linear_input_shape(inner: nn.Module) -> tuple[int, ...]:
    leaves = [m for m in inner.modules() if not list(m.children())]
    first = next((m for m in leaves if not isinstance(m, _SHAPE_ONLY)), None)
    if not isinstance(first, nn.Linear):
        raise ValueError("input_shape is required unless the first layer is nn.Linear")
    return (first.in_features,)


def _trace(model: nn.Module, inner: nn.Module, input_shape) -> list:
    leaves = [(n, m) for n, m in inner.named_modules() if not list(m.children())]
    input_shape = input_shape or _linear_input_shape(inner)
    param = next(inner.parameters(), None)
    dtype, device = (param.dtype, param.device) if param is not None else (torch.float32, "cpu")
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0)).to(dtype=dtype, device=device)
    records: list = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=n: records.append((name, mod, inp[0], out)))
             for n, m in leaves]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    expected = x
    for name, _, x_in, x_out in records + [("<model output>", None, out, None)]:
        if x_in.numel() != expected.numel() or not torch.equal(x_in.reshape(-1), expected.reshape(-1)):
            raise ValueError(f"the model is not a plain chain of layers: the input of {name!r} is not the "
                             "output of the layer before it (residual/concatenation or a functional op "
                             "in forward); use norm='spectral', which supports such graphs")
        expected = x_out
    return records


def _block_norm(block: list[tuple[float, float]], norm: str) -> float:
    if norm == "spectral":
        return math.prod(s for _, s in block)
    return min(fro * math.prod(s for j, (_, s) in enumerate(block) if j != i)
               for i, (fro, _) in enumerate(block))
