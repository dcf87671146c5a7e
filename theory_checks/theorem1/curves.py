"""The curves on S along which Theorem 1 is tested (step 4 of its proof holds for any curve on S).

* ``attack``: manipulation-attack iterates at fixed beta (gradient explanation of the twin attacked,
  logits kept), each projected onto S;
* ``random``: smooth random curves from p0 in random tangent directions, of the attack's reach;
* ``geodesic``: the shortened geodesic (curve shortening on S) between an attack path's end points;
* ``tight``: one short segment from p0 along the top principal direction (the eigenvector of
  kappa_max), of length sigma / |kappa_max(p0)| for each scale sigma: to first order the normal turns
  by |kappa_max| l, so the segment's ratio |n(p1) - n(p0)| / (kappa l) tends to 1;
* ``short``: the same scales in a random tangent direction (the normal turns by |L u| l <= kappa l).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from geomexpl.attack import manipulate
from geomexpl.geometry import geodesic_distance, logit
from theory_checks.theorem1.sampling import (CurveOnS, Samples, curves_from_paths, principal_direction,
                                             sample_on_level_set, top_curvature)

TIGHT_SCALES = (1e-3, 1e-2, 0.1, 0.3, 1.0)   # kappa_max(p0) x segment length of the tight/short curves


class _AsIs(nn.Module):
    """A smooth model (nn.Softplus, ...) hidden from the ReLU-twin machinery of the attack: it is run as it is."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.__dict__["inner"] = model      # not a registered child: the twin's activation check does not see it

    def forward(self, x):
        return self.inner(x)


def attack_paths(model: nn.Module, x: torch.Tensor, target_maps: torch.Tensor, beta: float | None, steps: int,
                 record_every: int, lr: float, bounds=(0.0, 1.0)) -> torch.Tensor:
    """Iterates [T, B, ...] of the gradient-explanation attack on the twin at FIXED beta (None: the model
    as it is, for a smooth model), logits kept."""
    model = _AsIs(model) if beta is None else model
    result = manipulate(model, x, target_maps, "gradient", beta_growth=None if beta is None else (beta, beta),
                        steps=steps, lr=lr, output="logits", record_every=record_every, bounds=bounds)
    return result.path


def tangent_directions(normals: torch.Tensor, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``count`` orthonormal random unit vectors [B, d] orthogonal to the unit ``normals`` [B, d]
    (fewer when d <= count)."""
    b, d = normals.shape
    basis: list[torch.Tensor] = []
    for _ in range(min(count, d - 1)):
        u = torch.randn(b, d, generator=generator, dtype=normals.dtype).to(normals.device)
        for _ in range(2):   # Gram-Schmidt, twice for orthogonality to working precision
            for q in [normals, *basis]:
                u = u - (u * q).sum(1, keepdim=True) * q
        basis.append(u / u.norm(dim=1, keepdim=True))
    return basis


def random_curves(x0: torch.Tensor, normals: torch.Tensor, radius: torch.Tensor, points: int,
                  generator: torch.Generator) -> torch.Tensor:
    """[points, B, ...]: x0 + r (t u + a sin(pi t) v + b sin(2 pi t) w), t in [0, 1], with u, v, w
    orthonormal and tangent to S at x0 (fewer of them when d < 4), a, b ~ U(-1/2, 1/2)."""
    b = x0.shape[0]
    basis = tangent_directions(normals.flatten(1), 3, generator)
    coef = torch.rand(2, b, 1, generator=generator, dtype=x0.dtype).to(x0.device) - 0.5
    t = torch.linspace(0, 1, points, dtype=x0.dtype, device=x0.device)[:, None, None]
    waves = [t, coef[0] * torch.sin(math.pi * t), coef[1] * torch.sin(2 * math.pi * t)]
    shape = sum(wave * direction for wave, direction in zip(waves, basis))
    return (x0.flatten(1) + radius.view(1, b, 1) * shape).view(points, *x0.shape)


def tight_curves(twin: nn.Module, starts: list[CurveOnS], scales=TIGHT_SCALES, generator: torch.Generator | None = None,
                 curvature=top_curvature, label: str = "") -> list[CurveOnS]:
    """From the first sample p0 of each curve in ``starts``: a ``tight`` segment along the top principal
    direction and (with a ``generator``) a ``short`` one in a random tangent direction, of length
    sigma / |kappa_max(p0)| for each sigma in ``scales`` (the measured p0 is reused). notes['start'] is the
    kind of the start curve ('start': a test image, 'attack': an attack path's end point)."""
    first = Samples.cat([c.samples.take(torch.tensor([0], device=c.s.device)) for c in starts])
    classes = torch.tensor([c.cls for c in starts], device=first.points.device)
    levels = torch.tensor([c.level for c in starts], dtype=first.points.dtype, device=first.points.device)
    directions = {"tight": principal_direction(logit(twin, classes), first.points).flatten(1)}
    if generator is not None:
        directions["short"] = tangent_directions(first.normals, 1, generator)[0]
    scale = torch.tensor(scales, dtype=first.points.dtype, device=first.points.device)
    length = scale[:, None] / first.kappa.clamp_min(torch.finfo(scale.dtype).tiny)[None]   # [S, B]
    curves = []
    for kind, u in directions.items():
        ends = first.points.flatten(1)[None] + length[..., None] * u[None]                 # [S, B, d]
        end = sample_on_level_set(twin, ends.flatten(0, 1).view(-1, *first.points.shape[1:]),
                                  classes.repeat(len(scales)), levels.repeat(len(scales)), curvature)
        for j, sigma in enumerate(scales):
            for i, start in enumerate(starts):
                idx = torch.tensor([j * len(starts) + i], device=first.points.device)
                pair = Samples.cat([first.take(torch.tensor([i], device=idx.device)), end.take(idx)])
                curve = CurveOnS(kind, label, start.beta, start.image, start.cls, start.level,
                                 torch.tensor([0.0, 1.0], dtype=torch.float64, device=idx.device), pair)
                curve.notes.update(scale=sigma, start=start.kind)
                curves.append(curve)
    return curves


def geodesic_curves(twin: nn.Module, attack: list[CurveOnS], points: int, iters: int,
                    curvature=top_curvature, label: str = "") -> list[CurveOnS]:
    """The shortened geodesic between the end points of each attack path, measured like any curve."""
    start = torch.stack([c.samples.points[0] for c in attack])
    end = torch.stack([c.samples.points[-1] for c in attack])
    classes = torch.tensor([c.cls for c in attack], device=start.device)
    levels = torch.tensor([c.level for c in attack], dtype=start.dtype, device=start.device)
    geo = geodesic_distance(logit(twin, classes), start, end, n_points=points, iters=iters)
    curves = curves_from_paths("geodesic", label, attack[0].beta, geo.path, twin, [c.image for c in attack],
                               classes, levels, curvature)
    for curve, err, length in zip(curves, geo.level_error.tolist(), geo.length.tolist()):
        curve.notes.update(geodesic_level_error=err, geodesic_length=length)
    return curves
