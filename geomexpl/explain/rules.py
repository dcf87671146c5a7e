"""Per-layer rules of the modified-backprop methods and the method -> rule mappings.

Notation (Sixt et al. 2020 sec. 2, Dombrowski et al. 2019 eq. 2-3): a linear layer computes
z_j = sum_i w_ji x_i + b_j; R is the relevance (or backward signal) of its output, A_W the layer
evaluated with weights W and A_W^T its exact transpose. W+ = max(W, 0), W- = min(W, 0),
[w x]^+ = W+ x+ + W- x-, [w x]^- = W+ x- + W- x+. Every rule is a plain differentiable torch
expression of the recorded activations, so the attack can differentiate through it.

Choices shared by the LRP family: the walk starts from R = f_k(x) at the target logit (Sixt et al.;
the reference code of Dombrowski et al.), ReLUs pass relevance unchanged, max pooling sends each
output's relevance to its argmax input (winner takes all), and the linear layers without learned
weights, average pooling and residual additions a + b, split relevance in proportion to the
positive contributions (the z+ rule: R_a = [a]^+ / ([a]^+ + [b]^+) R) in every LRP method but
LRP-epsilon, whose epsilon rule splits R_a = a / (a + b + eps) R. (Alpha-beta itself would scale
relevance by alpha there: these layers have no negative weights, so its beta term vanishes.)
A batch norm that follows no conv (a per-channel affine, a diagonal W) is a weighted layer and
gets the method's rule. An elementwise affine map by a constant (input normalisation) passes
relevance unchanged (the identity rule). Gradient-like methods (Guided BP, Deconv, RectGrad) start from the one-hot
target and pass additions through to both summands. Denominators are stabilised by z + eps sign(z) with
sign(0) = +1. Under a softplus twin the ReLU masks 1[z > 0] become sigmoid(beta z) and Guided BP's
and Deconv's rectification of the backward signal becomes softplus_beta (the reference code).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from geomexpl.checks import channel_bounds
from geomexpl.explain.propagation import Rules, Step, explanation_method, route_max, rule_set
from geomexpl.explain.registry import inputs_trusted
from geomexpl.nets import softplus_beta

STABILIZER = 1e-9  # keeps z+ / z- / zB / w^2 denominators away from zero
EPSILON = 1e-7  # default epsilon of LRP-epsilon and LRP-CMP (iNNvestigate's default)
TWIN_EPSILON = 0.1  # smallest epsilon LRP-epsilon accepts under a softplus twin (see linear_epsilon)
ALPHA_PRESETS = {"a1b0": 1.0, "a2b1": 2.0, "a5b4": 5.0}


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps sign(z), with sign(0) = +1, computed in z's dtype (float64 stays exact)."""
    return torch.where(z >= 0, z + eps, z - eps)


# ------------------------------------------------------------------ start and non-linear rules
def one_hot(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The gradient of f_k: e_k."""
    return F.one_hot(target.to(logits.device), logits.shape[1]).to(logits.dtype)


def logit_value(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """R^L = f_k(x) e_k: LRP's output relevance."""
    return one_hot(logits, target) * logits


def relu_mask(z: torch.Tensor, beta: float | None) -> torch.Tensor:
    """d relu / dz = 1[z > 0]; sigmoid(beta z) = d softplus_beta / dz under a softplus twin."""
    return (z > 0).to(z.dtype) if beta is None else torch.sigmoid(beta * z)


def masked(z: torch.Tensor, v: torch.Tensor, beta: float | None) -> torch.Tensor:
    """mask(z) * v. For the ReLU's 0/1 mask this is autograd's own fused ReLU-backward kernel
    (v where z > 0, else 0; differentiable in v), about 10x faster than a select."""
    return torch.ops.aten.threshold_backward(v, z, 0.0) if beta is None else torch.sigmoid(beta * z) * v


def relu_pass(step: Step, s: torch.Tensor) -> torch.Tensor:
    """LRP: relevance passes a ReLU unchanged."""
    return s


def relu_gradient(step: Step, s: torch.Tensor) -> torch.Tensor:
    """s_in = mask(z) s (the gradient; PatternNet/-Attribution)."""
    return masked(step.xs[0], s, step.beta)


def relu_guided(step: Step, s: torch.Tensor) -> torch.Tensor:
    """Guided BP (Sixt eq. 14): s_in = mask(z) [s]^+, [.]^+ = softplus_beta under a twin."""
    return masked(step.xs[0], softplus_beta(s, step.beta), step.beta)


def relu_deconv(step: Step, s: torch.Tensor) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus): s_in = [s]^+, no forward mask."""
    return softplus_beta(s, step.beta)


def percentile(v: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile of each row of v [B, n], linearly interpolated (numpy's default), [B, 1].
    Two kthvalue calls: unlike torch.quantile, no limit on the size of v."""
    position = q / 100.0 * (v.shape[1] - 1)
    low = v.kthvalue(math.floor(position) + 1, dim=1, keepdim=True).values
    high = v.kthvalue(math.ceil(position) + 1, dim=1, keepdim=True).values
    return low + (position - math.floor(position)) * (high - low)


def relu_rectgrad(q: float):
    """RectGrad (Kim et al. 2019): s_in = mask(z) s 1[a s > tau], a = relu(z) the layer's output
    and tau the q-th percentile of a * s over the layer's units, per example."""
    def rule(step: Step, s: torch.Tensor) -> torch.Tensor:
        score = (step.y * s).flatten(1)
        tau = percentile(score, q)
        return masked(step.xs[0], torch.where((score > tau).view_as(s), s, 0.0), step.beta)
    return rule


def max_route(step: Step, s: torch.Tensor) -> torch.Tensor:
    """Max pooling: the signal goes to the argmax input (the gradient; LRP's winner takes all)."""
    return route_max(s, step.index, step.xs[0].shape)


# ------------------------------------------------------------------ linear rules
def linear_transpose(step: Step, s: torch.Tensor) -> list[torch.Tensor]:
    """s_in = W^T s (the gradient through a linear layer)."""
    return step.op.transpose(s, step.op.weight)


def linear_epsilon(epsilon: float):
    """LRP-epsilon: R_i = x_i sum_j w_ji R_j / (z_j + eps sign z_j), z with the bias (Sixt eq. 7).

    Under a softplus twin (beta=) a small epsilon is refused: softplus_beta(z) > 0 even for z <= 0,
    so units that a ReLU silences (x_i = 0, hence R_i = 0) keep relevance, and the layer below
    divides it by its pre-activations z_j near 0; the ratio grows like 1/eps layer after layer
    (max |h| ~ 1e11 on the zoo VGG at beta=5, eps=1e-7). epsilon >= TWIN_EPSILON bounds it.
    """
    def rule(step: Step, R: torch.Tensor) -> list[torch.Tensor]:
        if step.beta is not None and epsilon < TWIN_EPSILON:
            raise ValueError(
                f"LRP-epsilon with epsilon={epsilon:g} under a softplus twin (beta={step.beta:g}) is unstable: "
                "softplus passes relevance to units a ReLU would silence, and the epsilon rule divides it by "
                f"pre-activations near 0. Pass epsilon >= {TWIN_EPSILON:g}, drop beta=, or use 'lrp' / "
                "'lrp_alpha_beta' (z+ denominators)")
        s = R / stabilize(step.y, epsilon)
        return [x * c for x, c in zip(step.xs, step.op.transpose(s, step.op.weight))]
    return rule


def linear_alpha_beta(alpha: float):
    """LRP-alpha-beta, beta = alpha - 1 (Sixt eq. 8; Bach et al.), bias ignored:
    R_i = sum_j (alpha [w_ji x_i]^+ / z+_j - beta [w_ji x_i]^- / z-_j) R_j, z+- = sum_i [w_ji x_i]^+-.
    alpha = 1 is the z+ rule (Dombrowski eq. 2). Inputs known to be non-negative skip the x- terms."""
    beta = alpha - 1.0

    def rule(step: Step, R: torch.Tensor) -> list[torch.Tensor]:
        op = step.op
        w_pos, w_neg = op.weight.clamp(min=0), op.weight.clamp(max=0)
        if step.layer.inputs_nonneg:
            parts = [(step.xs, w_pos, w_neg)]  # (inputs, weights making [wx]^+, weights making [wx]^-)
        else:
            parts = [([x.clamp(min=0) for x in step.xs], w_pos, w_neg),
                     ([x.clamp(max=0) for x in step.xs], w_neg, w_pos)]
        out = [torch.zeros_like(x) for x in step.xs]
        for coef, k in ((alpha, 1), (-beta, 2)):
            if coef == 0:
                continue
            z = sum(op.apply(part[0], part[k]) for part in parts)
            s = R / stabilize(z, STABILIZER)
            for part in parts:
                for i, c in enumerate(op.transpose(s, part[k])):
                    out[i] = out[i] + coef * part[0][i] * c
        return out
    return rule


def linear_zb(bounds):
    """zB rule for a bounded input l <= x <= h (Dombrowski eq. 3):
    R_i = sum_j (x_i w_ji - l_i w+_ji - h_i w-_ji) / sum_i (...) R_j."""
    lower, upper = bounds

    def rule(step: Step, R: torch.Tensor) -> list[torch.Tensor]:
        op, x = step.op, step.xs[0]
        lo, hi = step.input_bounds(*(b.expand_as(step.x) for b in channel_bounds(step.x, lower, upper)))
        lo, hi = lo.reshape(x.shape), hi.reshape(x.shape)
        w, w_pos, w_neg = op.weight, op.weight.clamp(min=0), op.weight.clamp(max=0)
        z = op.apply([x], w) - op.apply([lo], w_pos) - op.apply([hi], w_neg)
        s = R / stabilize(z, STABILIZER)
        (c,), (c_pos,), (c_neg,) = (op.transpose(s, v) for v in (w, w_pos, w_neg))
        return [x * c - lo * c_pos - hi * c_neg]
    return rule


def affine_identity(step: Step, R: torch.Tensor) -> list[torch.Tensor]:
    """The LRP family's rule for an elementwise affine map by a constant (an input normalisation
    (x - mean) / std): relevance passes unchanged, R_x = R_z (summed over broadcast dimensions)."""
    return [R.sum_to_size(step.xs[0].shape)]


def linear_wsquare(step: Step, R: torch.Tensor) -> list[torch.Tensor]:
    """Deep Taylor's w^2 rule for unbounded inputs: R_i = sum_j w_ji^2 / sum_i w_ji^2 R_j."""
    op = step.op
    w2 = op.weight * op.weight
    s = R / stabilize(op.apply([torch.ones_like(x) for x in step.xs], w2), STABILIZER)
    return op.transpose(s, w2)


# The z+ rule: R_i = sum_j [w_ji x_i]^+ / sum_i [w_ji x_i]^+ R_j (LRP-alpha1-beta0, Sixt eq. 5).
linear_zplus = linear_alpha_beta(1.0)


def lrp_linear(weighted):
    """The LRP family's linear rule: ``weighted`` for conv/dense/BN layers, the z+ split for average
    pooling and residual additions."""
    def rule(step: Step, R: torch.Tensor) -> list[torch.Tensor]:
        return linear_zplus(step, R) if step.layer.positive_weights else weighted(step, R)
    return rule


def _checked_bounds(bounds):
    if bounds is None or len(bounds) != 2:
        raise ValueError(f"bounds must be (lower, upper) of the input (scalars or per-channel), got {bounds!r}")
    if inputs_trusted():  # checked once by the attack: no host sync per step
        return bounds
    lower, upper = (torch.as_tensor(b, dtype=torch.float64) for b in bounds)
    if lower.shape != upper.shape or not bool((lower < upper).all()):
        raise ValueError(f"bounds need lower < upper of the same shape, got {bounds!r}")
    return bounds


def _alpha(alpha, preset, default: str) -> float:
    if alpha is not None and preset is not None:
        raise ValueError("give either alpha or preset, not both")
    if preset is not None and preset not in ALPHA_PRESETS:
        raise ValueError(f"preset must be one of {sorted(ALPHA_PRESETS)}, got {preset!r}")
    value = float(alpha if alpha is not None else ALPHA_PRESETS[preset or default])
    if not value >= 1.0:
        raise ValueError(f"LRP-alpha-beta needs alpha >= 1 (beta = alpha - 1 >= 0), got {alpha}")
    return value


def _check_epsilon(epsilon: float) -> float:
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    return float(epsilon)


# ------------------------------------------------------------------ methods
@rule_set("gradient")
def gradient() -> Rules:
    """The plain gradient r_l = W_l^T M_l r_{l+1} (Sixt eq. 2) through the engine: the baseline
    of the cosine similarity convergence (``explain(..., 'gradient')`` itself uses autograd)."""
    return Rules(linear=linear_transpose, relu=relu_gradient, maxpool=max_route, start=one_hot)


@rule_set("guided_backprop")
def guided_backprop() -> Rules:
    """Guided Backpropagation (Springenberg et al.): r_l = W_l^T [M_l r_{l+1}]^+ (Sixt eq. 14)."""
    return Rules(linear=linear_transpose, relu=relu_guided, maxpool=max_route, start=one_hot)


@rule_set("deconvnet")
def deconvnet() -> Rules:
    """Deconvnet (Zeiler & Fergus): r_l = W_l^T [r_{l+1}]^+, the ReLU's forward mask omitted."""
    return Rules(linear=linear_transpose, relu=relu_deconv, maxpool=max_route, start=one_hot)


@rule_set("rectgrad")
def rectgrad(q: float = 98.0) -> Rules:
    """RectGrad (Kim et al. 2019): the gradient, passed at a ReLU only where a * s exceeds the
    q-th percentile (q = 98 as recommended, Sixt et al.) of the layer's a * s."""
    if not 0 <= q <= 100:
        raise ValueError(f"rectgrad's percentile q must lie in [0, 100], got {q}")
    return Rules(linear=linear_transpose, relu=relu_rectgrad(float(q)), maxpool=max_route, start=one_hot)


@rule_set("lrp")
def lrp(bounds) -> Rules:
    """LRP as in Dombrowski et al. (eq. 1-3): zB in the first layer with the input ``bounds``
    (scalars or per-channel), z+ in every other layer; R^L = f_k(x) at the target."""
    zb = linear_zb(_checked_bounds(bounds))
    return Rules(linear=lrp_linear(lambda step, R: zb(step, R) if step.layer.first else linear_zplus(step, R)),
                 relu=relu_pass, maxpool=max_route, start=logit_value, affine=affine_identity)


@rule_set("deep_taylor")
def deep_taylor(bounds) -> Rules:
    """Deep Taylor Decomposition (Montavon et al. 2017, as in Sixt et al.): the rule follows the
    layer's input domain: zB for the bounded network input, z+ for non-negative inputs (after a
    ReLU), w^2 for unbounded ones; R^L = f_k(x)."""
    zb = linear_zb(_checked_bounds(bounds))

    def linear(step: Step, R: torch.Tensor):
        if step.layer.first:
            return zb(step, R)
        return linear_zplus(step, R) if step.layer.inputs_nonneg else linear_wsquare(step, R)
    return Rules(linear=lrp_linear(linear), relu=relu_pass, maxpool=max_route, start=logit_value,
                 affine=affine_identity)


@rule_set("lrp_epsilon")
def lrp_epsilon(epsilon: float = EPSILON) -> Rules:
    """LRP-epsilon in every layer (eps -> 0: LRP-z, which equals gradient x input on ReLU nets)."""
    return Rules(linear=linear_epsilon(_check_epsilon(epsilon)), relu=relu_pass, maxpool=max_route,
                 start=logit_value, affine=affine_identity)


@rule_set("lrp_alpha_beta")
def lrp_alpha_beta(alpha: float | None = None, preset: str | None = None) -> Rules:
    """LRP-alpha-beta in every layer with beta = alpha - 1: ``preset`` 'a1b0', 'a2b1' (default) or
    'a5b4', or ``alpha`` (explain's ``beta`` is the softplus parameter, so LRP's beta is implied)."""
    return Rules(linear=lrp_linear(linear_alpha_beta(_alpha(alpha, preset, "a2b1"))), relu=relu_pass,
                 maxpool=max_route, start=logit_value, affine=affine_identity)


@rule_set("lrp_cmp")
def lrp_cmp(epsilon: float = EPSILON, alpha: float | None = None, preset: str | None = None) -> Rules:
    """LRP-CMP (Kohlbrenner et al.; Sixt sec. 5): LRP-epsilon for dense (nn.Linear) layers and
    LRP-alpha-beta (preset 'a1b0' default, or 'a2b1') for conv and batch-norm layers."""
    dense = linear_epsilon(_check_epsilon(epsilon))
    other = linear_alpha_beta(_alpha(alpha, preset, "a1b0"))
    return Rules(linear=lrp_linear(lambda step, R: dense(step, R) if step.op.dense else other(step, R)),
                 relu=relu_pass, maxpool=max_route, start=logit_value, affine=affine_identity)


@rule_set("excitation_backprop")
def excitation_backprop() -> Rules:
    """Excitation Backprop (Zhang et al. 2018): marginal winning probabilities
    P(x_i) = sum_j [w_ji x_i]^+ / sum_i [w_ji x_i]^+ P(z_j), i.e. the z+ rule in every layer,
    from the one-hot prior P(z_k) = 1 at the target."""
    return Rules(linear=linear_zplus, relu=relu_pass, maxpool=max_route, start=one_hot, affine=affine_identity)


for _name, _bounds in (("guided_backprop", False), ("deconvnet", False), ("rectgrad", False), ("lrp", True),
                       ("deep_taylor", True), ("lrp_epsilon", False), ("lrp_alpha_beta", False),
                       ("lrp_cmp", False), ("excitation_backprop", False)):
    explanation_method(_name, uses_bounds=_bounds)
