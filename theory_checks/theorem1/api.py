"""``check(model, x, beta)``: Theorem 1 on any model and images, one beta (the documented entry point).

The ReLU ``model``'s softplus_beta twin is built in float64 (``beta=None``: the model is smooth as it is,
e.g. nn.Softplus); g is the logit of the predicted class (or ``cls``). From each image: the attack path,
a random curve, the shortened geodesic, tight and short segments at several scales; every segment is
tested (:mod:`.segments`) and sup |kappa| near the images is bracketed (:mod:`.bracket`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from geomexpl import nets
from geomexpl.attack import explanation_target
from geomexpl.geometry import gradient, logit
from geomexpl.nets.softplus import count_relus
from theory_checks.theorem1 import curves as C
from theory_checks.theorem1.bracket import Constants, bound_columns, curvature_ascent, theorem_constant
from theory_checks.theorem1.sampling import CurveOnS, curves_from_paths, float64_twin, max_pools, top_curvature
from theory_checks.theorem1.segments import curve_row, refine, segment_rows, summarise

SIZE = dict(attack_steps=60, lr=1e-2, segment_kl=0.5, min_points=7, max_points=25, geodesic_iters=15,
            tight_scales=C.TIGHT_SCALES, ascent_steps=4, refine_rounds=3, refine_worst=2, refine_split=4)


def smoothness(model: nn.Module, x: torch.Tensor, beta: float | None) -> list[str]:
    """Raise a ValueError naming the problem when Theorem 1 cannot be checked on ``model`` at ``beta``;
    return notes on where the checked network is not smooth (max pools)."""
    try:
        relus = count_relus(model, x[:1])
    except nets.UnsupportedActivationError as err:
        raise ValueError(f"Theorem 1 needs a smooth network or a softplus twin: {err}") from err
    if beta is None and relus:
        raise ValueError("the model calls ReLU, which is not smooth: Theorem 1 holds for its softplus twin; "
                         "pass beta=... to check the softplus_beta twin")
    if beta is not None and not relus:
        raise ValueError("the model calls no ReLU, so its softplus twin is the model itself; if it is smooth "
                         "(e.g. nn.Softplus), check it as it is with beta=None")
    if beta is not None:
        try:
            nets.softplus_twin(model, beta)(x[:1])
        except nets.UnsupportedActivationError as err:
            raise ValueError(f"no softplus twin of this model, so Theorem 1 (stated for softplus networks) cannot "
                             f"be checked on it at beta={beta}: {err}. A model that is smooth already can be "
                             "checked as it is with beta=None") from err
    pools = max_pools(nets.softplus_twin(model, beta) if beta is not None else model)
    if not pools:
        return []
    return [f"the model has {len(pools)} max pool(s), which the twin keeps: it is smooth only off their tie sets "
            "(where two pooled inputs are equal). A segment that fails while a max-pool selection changes inside it "
            "is reported as EXEMPT, not PASS; the switches are counted"]


def bound_beta(model: nn.Module, beta: float | None) -> float | None:
    """The beta of eq. (15): the twin's, or for a smooth model the largest nn.Softplus beta (None: no softplus)."""
    if beta is not None:
        return float(beta)
    betas = [float(m.beta) for m in model.modules() if isinstance(m, nn.Softplus)]
    return max(betas) if betas else None


def attack_targets(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor | None:
    """Gradient maps of other images of the batch (with another class where there is one), or None for B = 1."""
    b = x.shape[0]
    if b < 2:
        return None
    other = []
    for i in range(b):
        order = [(i + j) % b for j in range(1, b)]
        other.append(next((j for j in order if int(classes[j]) != int(classes[i])), order[0]))
    return explanation_target(model, x[other], "gradient", target=classes[other])


def curve_points(kappa0: torch.Tensor, length: torch.Tensor, size: dict) -> int:
    """Points per curve so that kappa(p0) x segment length is about size['segment_kl'] (within
    [min_points, max_points]): short segments keep the tests informative (kappa_bar l < 2) at large beta."""
    need = math.ceil(float((kappa0 * length).max()) / size["segment_kl"]) + 1
    return int(min(max(need, size["min_points"]), size["max_points"]))


def measure_at_beta(model: nn.Module, x: torch.Tensor, beta: float | None, classes: torch.Tensor,
                    target_maps: torch.Tensor | None, images: list[int], size: dict, generator: torch.Generator,
                    curvature=top_curvature, label: str = "", radius: float | None = None) -> dict:
    """Every curve from each image at one beta, refined; the ascent; and the region's radius."""
    twin = float64_twin(model, beta)
    x64 = x.double()
    with torch.no_grad():
        levels = logit(twin, classes)(x64)
    tag = math.nan if beta is None else beta
    starts = curves_from_paths("start", label, tag, x64[None], twin, images, classes, levels, curvature)
    kappa0 = torch.stack([c.samples.kappa[0] for c in starts])
    start_pts = x64
    normals = torch.stack([c.samples.normals[0] for c in starts])
    every, attack = [], []
    if target_maps is not None and size["attack_steps"] > 0:
        path = C.attack_paths(model, x, target_maps, beta, size["attack_steps"], 1, size["lr"]).double()
        walked = (path[1:] - path[:-1]).flatten(2).norm(dim=2).sum(0)
        count = curve_points(kappa0, walked, size)
        index = torch.linspace(0, len(path) - 1, count, device=x.device).round().long().unique()
        attack = curves_from_paths("attack", label, tag, path[index], twin, images, classes, levels, curvature)
        reach = (path[-1] - path[0]).flatten(1).norm(dim=1)
        region = float(reach.median()) if radius is None else radius
        every += attack + C.geodesic_curves(twin, attack, curve_points(kappa0, reach, size), size["geodesic_iters"],
                                            curvature, label)
    else:
        region = radius if radius is not None else 0.05 * float(x64.flatten(1).norm(dim=1).median())
        reach = torch.full_like(kappa0, region)
    # the random curves span the attack's reach, shortened where max_points would leave kappa l above segment_kl
    radius_rand = torch.minimum(reach, (size["max_points"] - 1) * size["segment_kl"] / (1.5 * kappa0))
    rand = C.random_curves(start_pts, normals, radius_rand, curve_points(kappa0, 1.5 * radius_rand, size), generator)
    every += curves_from_paths("random", label, tag, rand, twin, images, classes, levels, curvature)
    if size["tight_scales"]:   # from the images and from the attack's end points (off the max-pool ties of an image)
        ends = [CurveOnS(c.kind, c.label, c.beta, c.image, c.cls, c.level, c.s[-1:], c.samples.take(
            torch.tensor([len(c.s) - 1], device=x.device))) for c in attack]
        every += C.tight_curves(twin, starts + ends, size["tight_scales"], generator, curvature, label)
    refine(every, twin, size["refine_rounds"], size["refine_worst"], size["refine_split"], curvature)
    ascent = None
    if size["ascent_steps"] > 0:
        seeds = [start_pts] + ([torch.stack([_best_inside(c, x64[i], region) for i, c in enumerate(attack)])]
                               if attack else [])
        ascent = curvature_ascent(twin, torch.cat(seeds), classes.repeat(len(seeds)), levels.repeat(len(seeds)),
                                  x64.repeat(len(seeds), *[1] * (x.dim() - 1)),
                                  torch.full((len(seeds) * len(x),), region, dtype=x64.dtype, device=x.device),
                                  steps=size["ascent_steps"])
        ascent.grad_norm = gradient(logit(twin, classes.repeat(len(seeds))), ascent.point).flatten(1).norm(dim=1)
    return dict(twin=twin, curves=every, ascent=ascent, radius=region, x=x64, images=images)


def _best_inside(curve: CurveOnS, centre: torch.Tensor, radius: float) -> torch.Tensor:
    """The sample of ``curve`` with the largest |kappa| within ``radius`` of ``centre`` (else its start)."""
    dist = (curve.samples.points - centre).flatten(1).norm(dim=1)
    kappa = torch.where(dist <= radius, curve.samples.kappa, torch.full_like(curve.samples.kappa, -1.0))
    return curve.samples.points[int(kappa.argmax())]


def bracket_row(measured: dict, beta: float | None, constants: Constants) -> dict:
    """Lower end: the largest |kappa_max| met on S within the radius (curve samples and ascent); upper end:
    beta C~ / c per norm with c the smallest |grad g| there; the factor between them."""
    x, radius = measured["x"], measured["radius"]
    kappa, grads = [], []
    for curve in measured["curves"]:
        centre = x[measured["images"].index(curve.image)]
        inside = (curve.samples.points - centre).flatten(1).norm(dim=1) <= radius * (1 + 1e-9)
        kappa.append(curve.samples.kappa[inside])
        grads.append(curve.samples.grad_norm[inside])
    sampled = float(torch.cat(kappa).max()) if torch.cat(kappa).numel() else math.nan
    row = dict(radius=radius, points_inside=int(torch.cat(kappa).numel()), lower_sampled=sampled)
    ascent = measured["ascent"]
    if ascent is not None:
        ok = ascent.kappa >= 0
        row.update(lower_ascent=float(ascent.kappa[ok].max()) if ok.any() else math.nan,
                   ascent_gain_median=float((ascent.kappa[ok] / ascent.start_kappa[ok]).median()) if ok.any()
                   else math.nan, ascent_starts=int(len(ok)))
        grads.append(ascent.grad_norm[ok])
    lower = max(v for v in (sampled, row.get("lower_ascent", math.nan)) if not math.isnan(v))
    c = float(torch.cat(grads).min())
    row.update(lower=lower, c_min_grad=c)
    if beta is not None:
        cols = bound_columns(lower, beta, c, constants)
        row.update(upper_frobenius=cols["bound_frobenius"], upper_spectral=cols["bound_spectral"],
                   factor_frobenius=cols["bound_frobenius"] / lower, factor_spectral=cols["bound_spectral"] / lower,
                   holds_bound=cols["holds_bound"])
    return row


def point_bound_violations(measured: dict, beta: float | None, constants: Constants) -> int | None:
    """Sampled points where |kappa_max| > beta C~ / |grad g| (eq. 15 with c at the point) for some C~."""
    if beta is None or (constants.frobenius is None and constants.spectral is None):
        return None
    count = 0
    for curve in measured["curves"]:
        s = curve.samples
        for value in (constants.frobenius, constants.spectral):
            if value is not None:
                count += int((s.kappa > beta * value / s.grad_norm * (1 + 1e-9)).sum())
    return count


@dataclass
class Theorem1Result:
    """The outcome of :func:`check`: ``passed`` (no segment FAILs and at least one is informative),
    ``informative`` and ``tests`` (segment tests that could fail, and all of them), the per-segment table
    ``segments``, the per-curve table ``curves``, the ``bracket`` on sup |kappa| and ``notes``."""

    beta: float | None
    passed: bool
    informative: int
    tests: int
    segments: list[dict]
    curves: list[dict]
    bracket: dict
    counts: dict
    notes: list[str] = field(default_factory=list)

    def table(self, limit: int | None = None) -> str:
        """The per-segment table as text (``limit`` rows: the largest ratios first)."""
        rows = sorted(self.segments, key=lambda r: -r["ratio"])[:limit]
        head = f"{'kind':>8} {'img':>3} {'seg':>3} {'scale':>7} {'turn':>10} {'kappa_bar':>10} {'length':>10} " \
               f"{'kappa*l':>9} {'ratio':>7} {'info':>4} {'pool':>4} verdict"
        lines = [head] + [
            f"{r['kind']:>8} {r['image']:>3} {r['segment']:>3} {r['scale']:>7.3g} {r['turn']:>10.4g} "
            f"{r['kappa_bar']:>10.4g} {r['length']:>10.4g} {r['rhs']:>9.3g} {r['ratio']:>7.4f} "
            f"{'yes' if r['informative'] else 'no':>4} {'-' if r['pool_switches'] is None else r['pool_switches']:>4} "
            f"{r['verdict']}" for r in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        c = self.counts
        text = (f"Theorem 1 at beta={self.beta}: {'PASS' if self.passed else 'FAIL'}; {self.tests} segment tests, "
                f"{self.informative} informative (kappa_bar l < 2), {c['failed']} FAIL, {c['exempt']} EXEMPT; "
                f"informative ratios median {c['ratio_median']:.3g}, p90 {c['ratio_p90']:.3g}, "
                f"p99 {c['ratio_p99']:.4g}, max {c['ratio_max']:.4g}; sup|kappa| >= {self.bracket['lower']:.4g}")
        if "upper_spectral" in self.bracket:
            text += f" (<= {self.bracket['upper_spectral']:.3g} by beta C~/c, spectral)"
        return "\n".join([text] + [f"note: {n}" for n in self.notes])


def check(model: nn.Module, x: torch.Tensor, beta: float | None, cls=None, size: dict | None = None,
          seed: int = 0, radius: float | None = None, curvature=top_curvature) -> Theorem1Result:
    """Check Theorem 1 on ``model`` (ReLU; its softplus_beta twin in float64 is built here; ``beta=None``:
    a smooth model as it is) at the images ``x`` [B, ...] on their device. g is the logit of ``cls``
    (None: the predicted class). ``size`` overrides entries of :data:`SIZE`; ``radius`` the region of the
    bracket (default: the attack's median |delta|_2); ``curvature`` replaces the Lanczos |kappa_max|
    (e.g. to inject an error)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1 or x[0].numel() < 2:
        raise ValueError("x must be a batch [B, ...] of at least one input of dimension >= 2")
    model = model.eval()
    notes = smoothness(model, x, beta)
    size = {**SIZE, **(size or {})}
    with torch.no_grad():
        classes = model(x).argmax(1) if cls is None else torch.as_tensor(cls, device=x.device).long().expand(len(x))
    generator = torch.Generator().manual_seed(seed)
    targets = attack_targets(model, x, classes)
    if targets is None:
        notes.append("one image: no attack path (its target map needs a second image); radius "
                     f"{'given' if radius is not None else '0.05 |x|'}")
    measured = measure_at_beta(model, x, beta, classes, targets, list(range(len(x))), size, generator, curvature,
                               radius=radius)
    segments = [r for c in measured["curves"] for r in segment_rows(c, measured["twin"])]
    counts = summarise(segments)
    smooth = beta is None
    constants = theorem_constant(model, tuple(x.shape[1:]), smooth=smooth)
    b = bound_beta(model, beta)
    bracket = bracket_row(measured, b, constants)
    bracket["point_bound_violations"] = point_bound_violations(measured, b, constants)
    if constants.note:
        notes.append(f"constants: {constants.note}")
    if counts["informative"] == 0:
        notes.append("no informative segment (every kappa_bar l >= 2): nothing was tested")
    return Theorem1Result(beta, counts["failed"] == 0 and counts["informative"] > 0, counts["informative"],
                          counts["tests"], segments, [curve_row(c) for c in measured["curves"]], bracket, counts,
                          notes)

