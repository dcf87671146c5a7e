"""DeepLIFT with the Rescale rule (Shrikumar et al. 2017) and Sixt et al.'s 'ablation' variant.

The network runs on x and on a reference x0 (zeros or ``reference``) in one batch [x; x0];
multipliers m (the finite-difference analogue of the gradient, Sixt eq. 12) are propagated from
m = e_k at the target logit, and the explanation is the contribution C = m * (x - x0), which sums
to f_k(x) - f_k(x0) (summation to delta).

* linear layers: m_in = W^T m_out (the Rescale rule leaves positive and negative parts coupled);
* ReLU (softplus_beta under a twin): m_in = m_out * (y - y0) / (z - z0), and the derivative
  mask(z) where |z - z0| < sqrt(machine eps);
* max pooling (summation-preserving, as Captum): the delta max(y, y0) - y0 is sent to the argmax of
  x and y - max(y, y0) to the argmax of x0, each divided by x - x0 at that input.

``variant='ablation'`` (Sixt sec. 2.2, eq. 13 without the intermixing terms) keeps separate
multipliers for positive and negative deltas: r+_in = 1[dx > 0] W+^T r+, r-_in = 1[dx < 0] W-^T r-
for layers with weights (conv, dense, batch norm); pooling and residual additions, whose weights
are positive and so never mix the two, keep the full rule (r+- pass with W^T). The explanation is
r+ dx+ + r- dx-; recorded signals are r+ + r-.
"""
from __future__ import annotations

import torch

from geomexpl.checks import check_tensor
from geomexpl.explain.propagation import Rules, Step, explanation_method, route_max, rule_set
from geomexpl.explain.rules import linear_transpose, one_hot, relu_mask

VARIANTS = ("rescale", "ablation")


def _near(delta: torch.Tensor) -> torch.Tensor:
    """Where a finite difference is too small to divide by."""
    return delta.abs() <= torch.finfo(delta.dtype).eps ** 0.5


def _divide(num: torch.Tensor, delta: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """num / delta, and ``fallback`` where delta is about zero (no NaN in either branch)."""
    near = _near(delta)
    return torch.where(near, fallback, num / torch.where(near, torch.ones_like(delta), delta))


def _per_chain(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Repeat a [B, ...] factor for the ablation's [r+; r-] signal of batch 2B."""
    return m if m.shape[0] == s.shape[0] else torch.cat([m, m])


def relu_rescale(step: Step, s: torch.Tensor) -> torch.Tensor:
    """Rescale rule: m_in = m_out (y - y0) / (z - z0) (mask(z) where z ~ z0)."""
    (z, z0), (y, y0) = step.xs[0].chunk(2), step.y.chunk(2)
    slope = _divide(y - y0, z - z0, relu_mask(z, step.beta))
    return s * _per_chain(slope, s)


def max_rescale(step: Step, s: torch.Tensor) -> torch.Tensor:
    """Max pooling: the output delta routed through the argmax of x and x0, divided by x - x0."""
    (x, x0), (y, y0), (index, index0) = step.xs[0].chunk(2), step.y.chunk(2), step.index.chunk(2)
    top = torch.maximum(y, y0)

    def one_chain(m):
        num = route_max(m * (top - y0), index, x.shape) + route_max(m * (y - top), index0, x.shape)
        return _divide(num, x - x0, route_max(m, index, x.shape))
    return torch.cat([one_chain(m) for m in s.chunk(s.shape[0] // x.shape[0])])


def linear_ablation(step: Step, s: torch.Tensor) -> list[torch.Tensor]:
    """r+_in = 1[dx > 0] W+^T r+ and r-_in = 1[dx < 0] W-^T r- (W for positive-weight layers)."""
    op = step.op
    r_pos, r_neg = s.chunk(2)
    if step.layer.positive_weights:
        w_pos = w_neg = op.weight
    else:
        w_pos, w_neg = op.weight.clamp(min=0), op.weight.clamp(max=0)
    out = []
    for x, up, down in zip(step.xs, op.transpose(r_pos, w_pos), op.transpose(r_neg, w_neg)):
        delta = x[: r_pos.shape[0]] - x[r_pos.shape[0]:]
        out.append(torch.cat([up * (delta > 0).to(up.dtype), down * (delta < 0).to(down.dtype)]))
    return out


def _reference(reference):
    if reference is not None:
        check_tensor(reference, "reference", min_dim=1)

    def make(x: torch.Tensor) -> torch.Tensor:
        if reference is None:
            return torch.zeros_like(x)
        try:
            return torch.broadcast_to(reference.to(x), x.shape)
        except RuntimeError as err:
            raise ValueError(f"reference of shape {tuple(reference.shape)} does not broadcast to x of shape "
                             f"{tuple(x.shape)}") from err
    return make


def _contributions(s, x, x0):
    return s * (x - x0)


def _signed_contributions(s, x, x0):
    r_pos, r_neg = s.chunk(2)
    delta = x - x0
    return r_pos * delta.clamp(min=0) + r_neg * delta.clamp(max=0)


@rule_set("deeplift")
def deeplift(reference: torch.Tensor | None = None, variant: str = "rescale") -> Rules:
    """DeepLIFT-Rescale contributions C = m * (x - x0), sum C = f_k(x) - f_k(x0); ``reference``
    x0 broadcasts to x (default zeros); ``variant='ablation'``: Sixt et al.'s decoupled chains."""
    if variant not in VARIANTS:
        raise ValueError(f"deeplift variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "rescale":
        return Rules(linear=linear_transpose, relu=relu_rescale, maxpool=max_rescale, start=one_hot,
                     finish=_contributions, reference=_reference(reference))
    return Rules(linear=linear_ablation, relu=relu_rescale, maxpool=max_rescale, start=one_hot,
                 finish=_signed_contributions, reference=_reference(reference),
                 inject=lambda s: torch.cat([s, s]), readout=lambda s: sum(s.chunk(2)))


explanation_method("deeplift")
