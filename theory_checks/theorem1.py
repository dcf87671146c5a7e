"""Numerical verification of Theorem 1 (paper sec. 3; proof in supplement E.1, eqs. (3)-(19)).

For a network g with softplus_beta nonlinearities, k the winning class, S = {g_k = c} and p, p0 on S:

    |n(p) - n(p0)| <= |lambda_max| d_g(p, p0)                          (eq. 3, first inequality)
    |lambda_max| <= beta C~ / c,  c <= |grad g_k| on the region           (eq. 15, C~ of eq. 10)

n = grad g_k / |grad g_k|, lambda_max the principal curvature of largest magnitude.

What is checked. Step 4 of the proof (eqs. 16-19) integrates D_u n along a curve gamma on S from p0
to p, so for EVERY curve on S, |n(p) - n(p0)| <= int |kappa_max(gamma(t))| |gamma'(t)| dt
<= max_gamma |kappa| L(gamma), and d_g <= L(gamma). Each curve is sampled at points x_0..x_T put on
S by Newton projection; at each we take n, |grad g_k| and |kappa_max| (batched Lanczos,
``principal_curvatures(method='torch')``, float64). Then

    LHS = |n_T - n_0|,  RHS = max_i |kappa_i| * L,  L = sum_i |x_{i+1} - x_i|  (polyline on S).

Both max_i |kappa_i| and L are LOWER estimates (of sup |kappa| along the curve and of its length),
so a failure may be a sampling artefact. The discrete chain LHS <= sum_i |n_{i+1} - n_i| <= sum_i
max(kappa_i, kappa_{i+1}) l_i <= RHS can only break at a segment whose local ratio
r_i = |n_{i+1} - n_i| / (max(kappa_i, kappa_{i+1}) l_i) exceeds 1: curvature hidden between its
end points. Refinement subdivides the worst such segments (new points projected onto S, curvature
measured there) for a few rounds; a failure that persists is reported as FAIL. A segment whose
|n_{i+1} - n_i| stays put while its length shrinks is a jump of the normal: the level set is not
C^2 there. The zoo's VGG keeps its max-pooling in the softplus twin (only ReLUs are replaced), and
a max pool has kinks where two pooled inputs tie; such segments are checked for a change of the
max-pool selection between their end points.

Curves: (a) manipulation-attack paths at fixed beta (the gradient explanation of the twin is
attacked with the logits kept, record_every steps), projected point by point onto S;
(b) random smooth curves from p0 in a random tangent direction, of the attack's reach;
(c) the shortened geodesic between the attack path's end points (``geodesic_distance``: curve
shortening with projection onto S), with its own curvature samples. For (c) the max |g - c| of
the returned curve is reported: it is a curve on S, hence an upper estimate of d_g, only when that
residual is at the projection's accuracy.

Second inequality: c = ``min_gradient_norm`` along the curve and two constants from
``curvature_constant`` of the twin, each checked where it exists: eq. (10) with Frobenius norms (the
paper's C~; chains of layers only), and the spectral-norm graph bound (|H|_2 <= beta C~, which also
bounds every |kappa| times |grad g|; it handles residual additions and max pools). For eq. (10) a
max pool is piecewise a selection (a 0/1 matrix, one 1 per row): off the tie set the proof holds
with that linear map, whose Frobenius norm is sqrt(#outputs) and spectral norm 1 for every
selection pattern, so each MaxPool2d is replaced by a one-tap strided depthwise convolution of
exactly those norms. Residual networks have no eq. (10) constant (``curvature_constant`` refuses
them), only the graph bound.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geomexpl import data, nets
from geomexpl.attack import explanation_target, manipulate
from geomexpl.geometry import (curvature_constant, geodesic_distance, level_set_path_length, logit,
                               min_gradient_norm, principal_curvatures, project_to_level_set, value_and_gradient)
from theory_checks.report import CheckResult, SubCheck, write_csv

NAME = "theorem1"
LANCZOS_TOL = 1e-7     # Lanczos stops when |L y - kappa y| <= tol |kappa| (relative eigenvalue error <= tol)
REL_TOL = 1e-5         # LHS <= RHS (1 + REL_TOL); see _TOLERANCE_RULE
LEVEL_TOL = 1e-9       # a point is on S when |g - c| <= LEVEL_TOL max(1, |c|)
BOUND_TOL = 1e-9       # |kappa| <= beta C~ / c (1 + BOUND_TOL): float64 rounding of products of norms
PROJECT_STEPS = 30     # Newton steps of the projection onto S
CHUNK = 16             # points per batched Lanczos run
MAX_LANCZOS = 300      # Lanczos steps per run (top-1 needs 20-80 on the zoo models)

QUICK = dict(archs=("mlp",), betas=(1.0, 5.0, 50.0), images=2, attack_steps=40, record_every=5, lr=1e-2,
             curve_points=9, geodesic_points=9, geodesic_iters=15, refine_rounds=3, refine_segments=2,
             refine_split=4)
FULL = dict(archs=("vgg", "resnet"), betas=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0), images=2, attack_steps=60,
            record_every=10, lr=1e-2, curve_points=7, geodesic_points=9, geodesic_iters=15, refine_rounds=3,
            refine_segments=2, refine_split=4)

_TOLERANCE_RULE = (
    f"Relative: LHS <= RHS (1 + {REL_TOL:g}). Arithmetic is float64 (relative rounding ~1e-13 in n, lengths "
    f"and norms); the Lanczos estimate of |kappa_max| is a Ritz value, below the true value by at most its relative "
    f"residual <= {LANCZOS_TOL:g}; points are on S to |g - c| <= {LEVEL_TOL:g} max(1, |c|), which moves n by "
    "O(kappa |g - c| / |grad g|), far below 1e-5 relative. The sampling errors (max over samples <= sup, polyline "
    "<= arc length) are not absorbed by the tolerance: they are handled by refinement.")


# ---------------------------------------------------------------- measurements at points on S
def top_curvature(f, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|lambda_max| [B] of S at each x (largest-magnitude principal curvature, batched Lanczos in float64)
    and its relative residual |L y - kappa y| / |kappa| [B]."""
    kappa, info = principal_curvatures(f, x, k=1, which="LM", method="torch", tol=LANCZOS_TOL, maxiter=MAX_LANCZOS)
    size = kappa[:, 0].abs()
    return size, info.residuals[:, 0].to(size) / size.clamp_min(torch.finfo(size.dtype).tiny)


@dataclass
class Samples:
    """Points on S and what Theorem 1 needs at each: points [N, ...], normals [N, d], grad_norm [N],
    kappa [N] = |kappa_max|, kappa_residual [N] (relative), level_error [N] = |g - c|."""

    points: torch.Tensor
    normals: torch.Tensor
    grad_norm: torch.Tensor
    kappa: torch.Tensor
    kappa_residual: torch.Tensor
    level_error: torch.Tensor

    def take(self, order: torch.Tensor) -> "Samples":
        return Samples(*(getattr(self, name)[order] for name in Samples.__dataclass_fields__))

    @staticmethod
    def cat(parts: list["Samples"]) -> "Samples":
        return Samples(*(torch.cat([getattr(p, name) for p in parts]) for name in Samples.__dataclass_fields__))


def sample_on_level_set(twin: nn.Module, x: torch.Tensor, classes: torch.Tensor, levels: torch.Tensor,
                        curvature=top_curvature) -> Samples:
    """Project the points x [N, ...] onto S_i = {g_{k_i} = c_i} of ``twin`` and measure n, |grad g|,
    |kappa_max| (``curvature(f, x)`` -> (|kappa| [B], relative residual [B])) and |g - c| there."""
    parts = []
    for start in range(0, x.shape[0], CHUNK):
        sl = slice(start, start + CHUNK)
        f = logit(twin, classes[sl])
        p = project_to_level_set(f, x[sl], levels[sl], steps=PROJECT_STEPS)
        value, grad = value_and_gradient(f, p)
        norm = grad.flatten(1).norm(dim=1)
        kappa, residual = curvature(f, p)
        parts.append(Samples(p, grad.flatten(1) / norm[:, None], norm, kappa.to(norm), residual.to(norm),
                             (value - levels[sl]).abs()))
    return Samples.cat(parts)


@dataclass(eq=False)
class CurveOnS:
    """One curve on S from p0, its samples in order (``s`` is the curve parameter) and its history."""

    kind: str
    arch: str
    beta: float
    image: int
    cls: int
    level: float
    s: torch.Tensor
    samples: Samples
    refinements: list[dict] = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        self.initial_points = len(self.s)

    def insert(self, s: torch.Tensor, samples: Samples) -> None:
        order = torch.argsort(torch.cat([self.s, s]))
        self.s = torch.cat([self.s, s])[order]
        self.samples = Samples.cat([self.samples, samples]).take(order)


def curve_quantities(samples: Samples, rel_tol: float = REL_TOL) -> dict:
    """The two sides of the first inequality along sampled points x_0..x_T on S, and the discrete chain."""
    pts = samples.points.flatten(1)
    seg = (pts[1:] - pts[:-1]).norm(dim=1)
    turn = (samples.normals[1:] - samples.normals[:-1]).norm(dim=1)
    local_kappa = torch.maximum(samples.kappa[1:], samples.kappa[:-1])
    ratio = turn / (local_kappa * seg).clamp_min(torch.finfo(seg.dtype).tiny)
    lhs = float((samples.normals[-1] - samples.normals[0]).norm())
    kappa_max = float(samples.kappa.max())
    length = float(seg.sum())
    rhs = kappa_max * length
    worst = int(ratio.argmax())
    return dict(points=len(pts), lhs=lhs, turning=float(turn.sum()), integral=float((local_kappa * seg).sum()),
                kappa_max=kappa_max, length=length, euclidean=float((pts[-1] - pts[0]).norm()), rhs=rhs,
                slack=rhs / lhs if lhs > 0 else math.inf, holds=lhs <= rhs * (1 + rel_tol),
                worst_segment=worst, worst_local_ratio=float(ratio[worst]), worst_turn=float(turn[worst]),
                worst_length=float(seg[worst]), min_grad_norm=float(samples.grad_norm.min()),
                max_level_error=float(samples.level_error.max()),
                max_kappa_residual=float(samples.kappa_residual.max()), local_ratios=ratio)


def refine(curves: list[CurveOnS], twin: nn.Module, rounds: int, segments: int, split: int,
           curvature=top_curvature, rel_tol: float = REL_TOL) -> None:
    """Where the first inequality fails, subdivide the ``segments`` segments of largest local ratio
    (> 1) into ``split`` parts, project the new points onto S and measure them; ``rounds`` times.
    Each curve's ``refinements`` records the verdict after every round."""
    for rnd in range(rounds):
        work = []
        for curve in curves:
            q = curve_quantities(curve.samples, rel_tol)
            if q["holds"]:
                continue
            worst = torch.argsort(q["local_ratios"], descending=True)[:segments]
            worst = worst[q["local_ratios"][worst] > 1] if (q["local_ratios"][worst] > 1).any() else worst[:1]
            t = torch.arange(1, split, dtype=curve.s.dtype) / split
            for i in worst.tolist():
                a, b = curve.samples.points[i], curve.samples.points[i + 1]
                work += [(curve, curve.s[i] + tj * (curve.s[i + 1] - curve.s[i]), a + tj * (b - a)) for tj in t]
        if not work:
            return
        x = torch.stack([w[2] for w in work])
        classes = torch.tensor([w[0].cls for w in work])
        levels = torch.tensor([w[0].level for w in work], dtype=x.dtype)
        new = sample_on_level_set(twin, x, classes, levels, curvature)
        for curve in dict.fromkeys(w[0] for w in work):
            idx = torch.tensor([j for j, w in enumerate(work) if w[0] is curve])
            curve.insert(torch.stack([work[j][1] for j in idx.tolist()]), new.take(idx))
            q = curve_quantities(curve.samples, rel_tol)
            curve.refinements.append(dict(round=rnd + 1, points=q["points"], holds=q["holds"], slack=q["slack"],
                                          worst_local_ratio=q["worst_local_ratio"], worst_turn=q["worst_turn"],
                                          worst_length=q["worst_length"]))


# ---------------------------------------------------------------- the constants of the second inequality
@dataclass
class Constants:
    """C~ of the second inequality: ``frobenius`` = eq. (10) with Frobenius norms (chains only; max pools as
    selections), ``spectral`` = the graph bound with spectral norms (residual additions and max pools too);
    None where ``curvature_constant`` refuses the model, with the reason in ``note``."""

    frobenius: float | None
    spectral: float | None
    note: str = ""


def with_pools_as_selections(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module | None:
    """A copy of a Sequential whose MaxPool2d (kernel = stride, no padding) are one-tap strided depthwise
    convolutions: the linear map of a max pool off its tie set has exactly these norms (Frobenius
    sqrt(#outputs), spectral 1) for every selection pattern. None if the model is not of that form."""
    if not isinstance(model, nn.Sequential):
        return None
    param = next(model.parameters())
    x = torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device)
    layers = []
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.MaxPool2d):
                k = nn.modules.utils._pair(module.kernel_size)
                if nn.modules.utils._pair(module.stride) != k or module.padding not in (0, (0, 0)) or module.ceil_mode:
                    return None
                channels = x.shape[1]
                selection = nn.Conv2d(channels, channels, k, stride=k, groups=channels, bias=False).to(x)
                selection.weight.zero_()
                selection.weight[:, :, 0, 0] = 1.0
                module = selection.requires_grad_(False)
            x = module(x)
            layers.append(module)
    return nn.Sequential(*layers).eval()


def theorem_constant(model: nn.Module, input_shape: tuple[int, ...]) -> Constants:
    """Both C~ of the ReLU ``model``'s softplus twin (see :class:`Constants`)."""
    notes = []
    net = model
    if any(isinstance(m, nn.MaxPool2d) for m in model.modules()):
        net = with_pools_as_selections(model, input_shape)
        notes.append("eq. 10 with max pools as selections (valid off their tie set)" if net is not None else
                     "eq. 10: max pools other than kernel = stride without padding")
    values = []
    for candidate, norm in ((net, "frobenius"), (model, "spectral")):
        try:
            values.append(curvature_constant(nets.softplus_twin(candidate, 1.0), input_shape, norm=norm)
                          if candidate is not None else None)
        except ValueError as err:
            values.append(None)
            notes.append(f"no {norm} C~: curvature_constant refuses the model ({err})")
    return Constants(*values, note="; ".join(notes))


def bound_columns(kappa_max: float, beta: float, c: float, constants: Constants) -> dict:
    """beta C~ / c for both constants, whether kappa_max stays below every available one, log10 loosenesses."""
    out = {}
    for norm in ("frobenius", "spectral"):
        value = getattr(constants, norm)
        bound = beta * value / c if value is not None else math.nan
        out[f"bound_{norm}"] = bound
        out[f"log10_looseness_{norm}"] = math.log10(bound / kappa_max) if value is not None else math.nan
    available = [out[f"bound_{n}"] for n in ("frobenius", "spectral") if getattr(constants, n) is not None]
    out["holds_bound"] = all(kappa_max <= b * (1 + BOUND_TOL) for b in available) if available else None
    return out


# ---------------------------------------------------------------- the curves
def float64_twin(model: nn.Module, beta: float) -> nn.Module:
    """The softplus_beta twin of a float64 copy of ``model`` (the original is left untouched)."""
    return nets.softplus_twin(copy.deepcopy(model).double().eval().requires_grad_(False), beta)


def attack_paths(model: nn.Module, x: torch.Tensor, target_maps: torch.Tensor, beta: float, steps: int,
                 record_every: int, lr: float) -> torch.Tensor:
    """Iterates [T, B, ...] of the gradient-explanation attack on the twin at FIXED beta, logits kept."""
    result = manipulate(model, x, target_maps, "gradient", beta_growth=(beta, beta), steps=steps, lr=lr,
                        output="logits", record_every=record_every)
    return result.path


def random_curves(x0: torch.Tensor, normals: torch.Tensor, radius: torch.Tensor, points: int,
                  generator: torch.Generator) -> torch.Tensor:
    """[points, B, ...]: x0 + r (t u + a sin(pi t) v + b sin(2 pi t) w), t in [0, 1], with u, v, w
    orthonormal and tangent to S at x0 (orthogonal to the normal; fewer of them when d < 4), a, b ~ U(-1/2, 1/2)."""
    b, d = x0.shape[0], x0[0].numel()
    basis = []
    for _ in range(min(3, d - 1)):
        u = torch.randn(b, d, generator=generator, dtype=x0.dtype).to(x0.device)
        for _ in range(2):   # Gram-Schmidt, twice for orthogonality to working precision
            for q in [normals.flatten(1), *basis]:
                u = u - (u * q).sum(1, keepdim=True) * q
        basis.append(u / u.norm(dim=1, keepdim=True))
    coef = torch.rand(2, b, 1, generator=generator, dtype=x0.dtype).to(x0.device) - 0.5
    t = torch.linspace(0, 1, points, dtype=x0.dtype, device=x0.device)[:, None, None]
    waves = [t, coef[0] * torch.sin(math.pi * t), coef[1] * torch.sin(2 * math.pi * t)]
    shape = sum(wave * direction for wave, direction in zip(waves, basis))
    return (x0.flatten(1) + radius.view(1, b, 1) * shape).view(points, *x0.shape)


def curves_from_paths(kind: str, arch: str, beta: float, paths: torch.Tensor, twin: nn.Module,
                      images: list[int], classes: torch.Tensor, levels: torch.Tensor,
                      curvature=top_curvature) -> list[CurveOnS]:
    """Project every point of ``paths`` [T, B, ...] onto S and measure: one CurveOnS per example."""
    t, b = paths.shape[:2]
    flat = paths.transpose(0, 1).reshape(t * b, *paths.shape[2:])
    samples = sample_on_level_set(twin, flat, classes.repeat_interleave(t), levels.repeat_interleave(t), curvature)
    s = torch.arange(t, dtype=torch.float64)
    return [CurveOnS(kind, arch, beta, images[i], int(classes[i]), float(levels[i]), s.clone(),
                     samples.take(torch.arange(i * t, (i + 1) * t))) for i in range(b)]


def pool_switches(twin: nn.Module, a: torch.Tensor, b: torch.Tensor) -> int | None:
    """How many max-pool outputs select a different input at a than at b (None: the model has no max pool)."""
    pools = [m for m in nets.unwrap(twin)[0].modules() if isinstance(m, nn.MaxPool2d)]
    if not pools:
        return None
    seen: dict[int, list[torch.Tensor]] = {id(m): [] for m in pools}

    def hook(module, inputs, _):
        _, idx = F.max_pool2d(inputs[0], module.kernel_size, module.stride, module.padding, module.dilation,
                              module.ceil_mode, return_indices=True)
        seen[id(module)].append(idx)

    handles = [m.register_forward_hook(hook) for m in pools]
    try:
        with torch.no_grad():
            twin(torch.stack([a, b]))
    finally:
        for h in handles:
            h.remove()
    return int(sum((idx[0][0] != idx[0][1]).sum() for idx in seen.values()))


# ---------------------------------------------------------------- one model at one beta
def measure_model_at_beta(model: nn.Module, arch: str, beta: float, x: torch.Tensor, images: list[int],
                          target_maps: torch.Tensor, size: dict, generator: torch.Generator,
                          curvature=top_curvature) -> list[CurveOnS]:
    """Attack paths, random curves and shortened geodesics from each image at one beta, refined where
    the first inequality fails."""
    twin = float64_twin(model, beta)
    x64 = x.double()
    with torch.no_grad():
        classes = model(x).argmax(1)
        levels = logit(twin, classes)(x64)
    path = attack_paths(model, x, target_maps, beta, size["attack_steps"], size["record_every"], size["lr"]).double()
    attack = curves_from_paths("attack", arch, beta, path, twin, images, classes, levels, curvature)
    for curve, raw in zip(attack, path.unbind(1)):
        curve.notes.update(level_set_path_length_refine4=float(
            level_set_path_length(logit(twin, torch.tensor([curve.cls])), raw[:, None], torch.tensor([curve.level]),
                                  steps=PROJECT_STEPS, refine=4)[0]))
    start = torch.stack([c.samples.points[0] for c in attack])
    end = torch.stack([c.samples.points[-1] for c in attack])
    normals = torch.stack([c.samples.normals[0] for c in attack])
    radius = (end - start).flatten(1).norm(dim=1)
    curves = random_curves(start, normals, radius, size["curve_points"], generator)
    randoms = curves_from_paths("random", arch, beta, curves, twin, images, classes, levels, curvature)
    geo = geodesic_distance(logit(twin, classes), start, end, n_points=size["geodesic_points"],
                            iters=size["geodesic_iters"])
    geodesics = curves_from_paths("geodesic", arch, beta, geo.path, twin, images, classes, levels, curvature)
    for curve, err, length in zip(geodesics, geo.level_error.tolist(), geo.length.tolist()):
        curve.notes.update(geodesic_level_error=err, geodesic_length=length)
    every = attack + randoms + geodesics
    refine(every, twin, size["refine_rounds"], size["refine_segments"], size["refine_split"], curvature)
    return every


_NOTES = ("level_set_path_length_refine4", "geodesic_level_error", "geodesic_length")


def curve_row(curve: CurveOnS, twin: nn.Module, constants: Constants, bound_beta: float | None = None) -> dict:
    """One table row: both sides of both inequalities, slacks, loosenesses and the refinement history.
    ``bound_beta`` replaces beta in beta C~ / c (only to show that a wrong bound is caught)."""
    q = curve_quantities(curve.samples)
    c = float(min_gradient_norm(logit(twin, torch.tensor([curve.cls])), curve.samples.points[:, None]))
    switches = None
    if not q["holds"] or q["worst_local_ratio"] > 1:
        i = q["worst_segment"]
        switches = pool_switches(twin, curve.samples.points[i], curve.samples.points[i + 1])
    return dict(arch=curve.arch, beta=curve.beta, kind=curve.kind, image=curve.image, cls=curve.cls,
                level=curve.level, on_level_set=q["max_level_error"] <= LEVEL_TOL * max(1.0, abs(curve.level)),
                points=q["points"], initial_points=curve.initial_points, lhs=q["lhs"], turning=q["turning"],
                integral=q["integral"], kappa_max=q["kappa_max"], length=q["length"], euclidean=q["euclidean"],
                rhs=q["rhs"], slack=q["slack"], holds=q["holds"], refinement_rounds=len(curve.refinements),
                held_before_refinement=not curve.refinements, worst_local_ratio=q["worst_local_ratio"],
                worst_turn=q["worst_turn"], worst_length=q["worst_length"],
                pool_switches_on_worst_segment=switches, c_min_grad=c, c_tilde_frobenius=constants.frobenius,
                c_tilde_spectral=constants.spectral,
                **bound_columns(q["kappa_max"], curve.beta if bound_beta is None else bound_beta, c, constants),
                max_level_error=q["max_level_error"], max_kappa_residual=q["max_kappa_residual"],
                refinement_history=curve.refinements, **{k: curve.notes.get(k, math.nan) for k in _NOTES})


def check_model(model: nn.Module, arch: str, size: dict, seed: int, curvature=top_curvature,
                constants: Constants | None = None, bound_beta=None) -> list[dict]:
    """Rows of every curve of one zoo model over the betas of ``size``. ``curvature``, ``constants`` and
    ``bound_beta`` (beta -> the beta used in the bound) can be injected."""
    x_all, _ = data.load("digits", "test")
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        pred = model(x_all).argmax(1)
    chosen = rng.permutation(len(x_all))[: size["images"]].tolist()
    others = [int(rng.choice(np.flatnonzero(pred.numpy() != int(pred[i])))) for i in chosen]
    x = x_all[chosen]
    target_maps = explanation_target(model, x_all[others], "gradient")
    constants = constants or theorem_constant(model, tuple(x.shape[1:]))
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for beta in size["betas"]:
        curves = measure_model_at_beta(model, arch, beta, x, chosen, target_maps, size, generator, curvature)
        twin = float64_twin(model, beta)
        rows += [dict(curve_row(cv, twin, constants, bound_beta(beta) if bound_beta else None),
                      c_tilde_note=constants.note) for cv in curves]
    return rows


# ---------------------------------------------------------------- sub-checks
_KIND_TEXT = {
    "attack": "manipulation-attack paths at fixed beta (gradient explanation, logits kept), every recorded iterate "
              "projected onto S",
    "random": "random smooth curves from p0 in random tangent directions, of the attack's reach, projected onto S",
    "geodesic": "shortened geodesics (curve shortening on S) between the attack paths' end points, with curvature "
                "sampled along the geodesic itself",
}


def first_inequality_subcheck(rows: list[dict], arch: str, kind: str) -> SubCheck:
    """|n(p) - n(p0)| <= max|kappa| L on every curve of ``kind`` for ``arch`` (after refinement)."""
    sel = [r for r in rows if r["arch"] == arch and r["kind"] == kind]
    valid = [r for r in sel if r["on_level_set"]]
    failed = [r for r in valid if not r["holds"]]
    slack = np.array([r["slack"] for r in valid if r["lhs"] > 0])
    numbers = dict(curves=len(sel), on_level_set=len(valid),
                   held_before_refinement=sum(r["held_before_refinement"] for r in valid),
                   refined=sum(not r["held_before_refinement"] for r in valid), failing_after_refinement=len(failed),
                   min_slack=float(slack.min()) if slack.size else math.nan,
                   median_slack=float(np.median(slack)) if slack.size else math.nan,
                   max_slack=float(slack.max()) if slack.size else math.nan,
                   median_lhs=float(np.median([r["lhs"] for r in valid])) if valid else math.nan,
                   median_length=float(np.median([r["length"] for r in valid])) if valid else math.nan,
                   median_kappa_max=float(np.median([r["kappa_max"] for r in valid])) if valid else math.nan,
                   max_level_error=max((r["max_level_error"] for r in sel), default=math.nan),
                   max_kappa_relative_residual=max((r["max_kappa_residual"] for r in sel), default=math.nan),
                   max_local_ratio=max((r["worst_local_ratio"] for r in valid), default=math.nan))
    local = [r for r in valid if r["worst_local_ratio"] > 1]
    numbers["curves_with_local_ratio_above_1"] = len(local)
    ratio = [r["length"] / r["euclidean"] for r in valid]
    if kind == "geodesic":
        numbers.update(max_raw_geodesic_level_error=max(r["geodesic_level_error"] for r in sel),
                       median_length_over_euclidean=float(np.median(ratio)) if valid else math.nan,
                       max_length_over_euclidean=max(ratio, default=math.nan))
    if kind == "attack":
        numbers.update(median_refine4_over_length=float(np.median(
            [r["level_set_path_length_refine4"] / r["length"] for r in valid])) if valid else math.nan)
    explanation = _failure_text(failed) if failed else (
        "Every curve satisfies LHS <= max|kappa| L (slack = RHS / LHS >= 1); " + (
            "refinement was needed for some and resolved them." if numbers["refined"] else "no refinement needed."))
    if local and not failed:
        kinks = [r for r in local if r["pool_switches_on_worst_segment"]]
        explanation += (f" On {len(local)} curve(s) one segment turns the normal faster than the larger end-point "
                        f"|kappa| explains (local ratio up to {numbers['max_local_ratio']:.3g}): curvature between the "
                        "samples" + (f" or, where the max-pool selection changes across the segment ({len(kinks)} of "
                                     "them), a max-pool kink" if any(r["pool_switches_on_worst_segment"] is not None
                                                                      for r in local) else "")
                        + "; the curve's inequality holds regardless, by its slack.")
    if kind == "geodesic" and valid:
        on_s = all(r["geodesic_level_error"] <= LEVEL_TOL * max(1.0, abs(r["level"])) for r in sel)
        explanation += (f" The shortened geodesics as returned are off S by at most "
                        f"{numbers['max_raw_geodesic_level_error']:.2g} in g" + (
                            f", so they are curves on S and |p - p0| <= d_g <= their length: the true d_g is pinned "
                            f"to within a factor {max(ratio):.6g} of the length used." if on_s else
                            f", more than {LEVEL_TOL:g} max(1, |c|): their own lengths are not certified upper "
                            "estimates of d_g (the check measures the re-projected points)."))
    if len(valid) < len(sel):
        explanation += (f" {len(sel) - len(valid)} curve(s) could not be projected onto S to {LEVEL_TOL:g} and are not "
                        "test cases of the theorem (counted, not hidden).")
    return SubCheck(
        name=f"first_inequality_{kind}_{arch}",
        measured=(f"{arch}: {_KIND_TEXT[kind]}; LHS = |n(p) - n(p0)|, RHS = max sampled |kappa_max| x length of "
                  "the polyline through the points on S; failing curves refined (worst segments subdivided)."),
        numbers=numbers, tolerance=REL_TOL, tolerance_rule=_TOLERANCE_RULE, passed=bool(valid) and not failed,
        explanation=explanation)


def _failure_text(failed: list[dict]) -> str:
    worst = max(failed, key=lambda r: r["lhs"] / r["rhs"])
    pools = [r["pool_switches_on_worst_segment"] for r in failed]
    text = (f"{len(failed)} curve(s) violate LHS <= RHS after {worst['refinement_rounds']} refinement round(s). Worst: "
            f"beta {worst['beta']:g}, {worst['kind']} from image {worst['image']}: LHS {worst['lhs']:.4g} > RHS "
            f"{worst['rhs']:.4g}; its worst segment turns the normal by {worst['worst_turn']:.3g} over a length of "
            f"{worst['worst_length']:.3g} (local ratio {worst['worst_local_ratio']:.3g}).")
    if any(p is not None for p in pools):
        switched = sum(1 for p in pools if p)
        text += (f" In {switched} of {len(failed)} failing curves the max-pool selection changes across the worst "
                 "segment: the normal jumps at a max-pool tie, where the twin (max pooling kept, only ReLUs "
                 "replaced) is not C^2, so Theorem 1's hypothesis (a softplus network) does not hold there.")
    return text


def constant_bound_subcheck(rows: list[dict], arch: str) -> SubCheck | None:
    """|lambda_max| <= beta C~ / c along every curve of ``arch``, for each available C~; None without any."""
    sel = [r for r in rows if r["arch"] == arch and r["on_level_set"]]
    if not sel or sel[0]["holds_bound"] is None:
        return None
    failed = [r for r in sel if not r["holds_bound"]]
    numbers = dict(curves=len(sel), failing=len(failed))
    text = []
    for norm in ("frobenius", "spectral"):
        loose = np.array([r[f"log10_looseness_{norm}"] for r in sel])
        if np.isnan(loose).all():
            continue
        numbers.update({f"c_tilde_{norm}": sel[0][f"c_tilde_{norm}"], f"min_log10_looseness_{norm}": float(loose.min()),
                        f"median_log10_looseness_{norm}": float(np.median(loose)),
                        f"max_log10_looseness_{norm}": float(loose.max())})
        by_beta = [round(float(np.median([r[f"log10_looseness_{norm}"] for r in sel if r["beta"] == b])), 2)
                   for b in dict.fromkeys(r["beta"] for r in sel)]
        numbers[f"median_log10_looseness_{norm}_by_beta"] = by_beta
        text.append(f"with the {norm} C~ = {sel[0][f'c_tilde_{norm}']:.3g} the bound exceeds the measured max |kappa| "
                    f"by 10^{np.median(loose):.1f} (median; 10^{loose.min():.1f} at the tightest)")
    explanation = ("Looseness of beta C~ / c: " + "; ".join(text) + ". C~ multiplies norms of all layers "
                   "against one curvature of one level set.")
    if sel[0]["c_tilde_note"]:
        explanation += f" Notes: {sel[0]['c_tilde_note']}."
    if failed:
        worst = max(failed, key=lambda r: r["kappa_max"] / min(r["bound_frobenius"], r["bound_spectral"]))
        explanation = (f"{len(failed)} curve(s) have max |kappa| above beta C~ / c (worst: beta {worst['beta']:g}, "
                       f"{worst['kind']}, max|kappa| {worst['kappa_max']:.4g}, bounds {worst['bound_frobenius']:.4g} "
                       f"(Frobenius), {worst['bound_spectral']:.4g} (spectral)). ") + explanation
    return SubCheck(
        name=f"curvature_bound_{arch}",
        measured=(f"{arch}: along every curve, max sampled |kappa_max| against beta C~ / c with c = min_gradient_norm "
                  "along the curve, for C~ = curvature_constant of the twin: eq. (10) (Frobenius) and the spectral "
                  "graph bound, each where available; looseness = log10(bound / max|kappa|)."),
        numbers=numbers, tolerance=BOUND_TOL,
        tolerance_rule=("Relative, float64 rounding of the products of norms. The sampled max |kappa| is a lower "
                        "estimate of the sup: a FAIL would be conclusive, a PASS is evidence only; given the "
                        "looseness, no plausible sampling error matters."),
        passed=not failed, explanation=explanation)


# ---------------------------------------------------------------- the check's entry point
def run(out_dir: Path, quick: bool, seed: int) -> CheckResult:
    """Check both inequalities for each zoo model of the run; tables and plots under ``out_dir/theorem1``."""
    size = QUICK if quick else FULL
    folder = Path(out_dir) / NAME
    folder.mkdir(parents=True, exist_ok=True)
    rows, notes = [], {}
    for arch in size["archs"]:
        model = nets.pretrained(arch, "digits", progress=False)
        arch_rows = check_model(model, arch, size, seed)
        notes[arch] = arch_rows[0]["c_tilde_note"]
        rows += arch_rows
    table = str(write_csv(folder / "curves.csv", [_flat(r) for r in rows]).relative_to(out_dir))
    subchecks = []
    for arch in size["archs"]:
        subchecks += [first_inequality_subcheck(rows, arch, kind) for kind in ("attack", "random", "geodesic")]
        bound = constant_bound_subcheck(rows, arch)
        subchecks += [bound] if bound else []
    for sub in subchecks:
        sub.files.append(table)
    plots = [_plot_sides(rows, folder / "first_inequality.png"), _plot_looseness(rows, folder / "constant_bound.png")]
    files = [table] + [str(p.relative_to(out_dir)) for p in plots if p is not None]
    return CheckResult(NAME, "|n(p) - n(p0)| <= |lambda_max| d_g <= beta C~ / c d_g (softplus twins)",
                       _summary(rows, size, notes), subchecks, files)


def _flat(row: dict) -> dict:
    history = row["refinement_history"]
    return {**{k: v for k, v in row.items() if k != "refinement_history"},
            "refinement_history": ";".join(f"r{h['round']}:{h['points']}pts,slack={h['slack']:.4g},"
                                           f"ratio={h['worst_local_ratio']:.3g}" for h in history)}


def _summary(rows: list[dict], size: dict, notes: dict) -> str:
    counts = {k: sum(r["kind"] == k for r in rows) for k in ("attack", "random", "geodesic")}
    text = (f"Models {', '.join(size['archs'])} (softplus twins of the zoo's trained digits models, float64), "
            f"beta in {list(size['betas'])}, {size['images']} test images per beta; per model and beta: the attack "
            f"path ({size['attack_steps']} Adam steps at lr {size['lr']:g}, a point every {size['record_every']}), "
            f"a random curve ({size['curve_points']} points) and the shortened geodesic "
            f"({size['geodesic_points']} points, {size['geodesic_iters']} shortening iterations per level) from "
            f"each image: {counts['attack']} attack paths, {counts['random']} random curves, {counts['geodesic']} "
            f"geodesics in all. Failing curves are refined up to {size['refine_rounds']} rounds "
            f"({size['refine_segments']} worst segments split in {size['refine_split']}). The first inequality is "
            "checked along every curve with lambda_max sampled along that curve (the proof's step 4 holds for any "
            "curve on S, and d_g <= its length). ")
    for arch, note in notes.items():
        if "max pools" in note:
            text += (f"{arch}: the twin keeps the max pools (only ReLUs become softplus), so it is smooth only off the "
                     "max-pool tie set; the first inequality is tested there beyond the theorem's hypothesis. ")
        if note:
            text += f"{arch} constants: {note}. "
    return text


def _plot_sides(rows: list[dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    markers = {"attack": "o", "random": "s", "geodesic": "^"}
    for arch in dict.fromkeys(r["arch"] for r in rows):
        for kind, marker in markers.items():
            sel = [r for r in rows if r["arch"] == arch and r["kind"] == kind and r["lhs"] > 0]
            if not sel:
                continue
            pts = left.scatter([r["rhs"] for r in sel], [r["lhs"] for r in sel], marker=marker, s=18, alpha=0.7,
                               label=f"{arch} {kind}")
            right.scatter([r["beta"] * (1 + 0.04 * list(markers).index(kind)) for r in sel],
                          [r["slack"] for r in sel], marker=marker, s=18, alpha=0.7, color=pts.get_facecolor()[0])
    lims = [min(min(r["lhs"], r["rhs"]) for r in rows if r["lhs"] > 0), max(max(r["lhs"], r["rhs"]) for r in rows)]
    left.plot(lims, lims, "k--", lw=0.8, label="LHS = RHS")
    left.set(xscale="log", yscale="log", xlabel="RHS = max|kappa| x length on S", ylabel="LHS = |n(p) - n(p0)|",
             title="Theorem 1, first inequality (below the diagonal: holds)")
    right.axhline(1.0, color="k", lw=0.8, ls="--")
    right.set(xscale="log", yscale="log", xlabel="beta", ylabel="slack RHS / LHS", title="Slack per curve")
    left.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def _plot_looseness(rows: list[dict], path: Path) -> Path | None:
    from matplotlib.figure import Figure

    sel = [r for r in rows if r["holds_bound"] is not None and r["on_level_set"]]
    if not sel:
        return None
    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.subplots()
    for arch in dict.fromkeys(r["arch"] for r in sel):
        for norm, label in (("frobenius", "Frobenius C~ (eq. 10)"), ("spectral", "spectral graph C~")):
            pts = [(r["beta"], r[f"log10_looseness_{norm}"]) for r in sel
                   if r["arch"] == arch and math.isfinite(r[f"log10_looseness_{norm}"])]
            if pts:
                ax.scatter(*zip(*pts), s=14, alpha=0.7, label=f"{arch}: {label}")
    ax.set(xscale="log", xlabel="beta", ylabel="log10(beta C~ / c  /  max|kappa|)",
           title="Looseness of |lambda_max| <= beta C~ / c")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path
