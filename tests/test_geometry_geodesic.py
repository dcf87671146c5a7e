"""Path lengths, projection onto level sets and discrete geodesics against closed forms."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomexpl.geometry import (geodesic_distance, level_set_path_length, logit, path_length,
                               project_to_level_set)

SETTINGS = settings(deadline=None, max_examples=8)


def points_on_sphere(n: int, d: int, radius: float, gen: torch.Generator) -> torch.Tensor:
    u = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return radius * u / u.norm(dim=1, keepdim=True)


def norm_f(z: torch.Tensor) -> torch.Tensor:
    return z.flatten(1).norm(dim=1)


def test_path_length_of_polylines():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None, None]
    a, b = torch.randn(2, 3, 2, 2, dtype=torch.float64).unbind(0)
    straight = (1 - t[..., None]) * a + t[..., None] * b            # [T, B=3, 2, 2]
    torch.testing.assert_close(path_length(straight), (b - a).flatten(1).norm(dim=1))
    zigzag = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]])   # one path [T, d]
    assert path_length(zigzag).item() == pytest.approx(9.0)


@SETTINGS
@given(d=st.integers(2, 20), seed=st.integers(0, 2**16))
def test_projection_lands_on_the_level_set_of_a_softplus_net(d, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 16), nn.Softplus(3.0), nn.Linear(16, 2)).double()
    f = logit(net, 0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, d, generator=gen, dtype=torch.float64)
    c = f(x).detach()
    moved = x + 0.05 * torch.randn(4, d, generator=gen, dtype=torch.float64)
    projected = project_to_level_set(f, moved, c)
    assert (f(projected) - c).abs().max() < 1e-12
    assert ((projected - moved).norm(dim=1) <= 2 * (moved - x).norm(dim=1)).all()   # a nearby point


def sphere_f(radius: float):
    """A function whose level set 0 is the sphere of this radius but whose gradient off the sphere is
    not radial, so Newton projection of a chord is not already the great circle."""
    return lambda z: (z.flatten(1).norm(dim=1) ** 2 - radius ** 2) * (1.5 + 0.5 * torch.tanh(z[:, 0] - z[:, 1]))


@SETTINGS
@given(d=st.integers(3, 12), radius=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_geodesic_on_sphere_is_the_great_circle(d, radius, seed):
    gen = torch.Generator().manual_seed(seed)
    x0, x1 = points_on_sphere(3, d, radius, gen), points_on_sphere(3, d, radius, gen)
    cos = (x0 * x1).sum(1) / radius ** 2
    x1 = torch.where((cos < -0.85)[:, None], -x1, x1)                     # avoid near-antipodal pairs
    great_circle = radius * torch.arccos(((x0 * x1).sum(1) / radius ** 2).clamp(-1, 1))
    f = sphere_f(radius)
    result = geodesic_distance(f, x0, x1, n_points=17)
    assert ((result.length - great_circle).abs() <= 0.01 * great_circle).all()
    assert (norm_f(result.path.flatten(0, 1)) - radius).abs().max() <= 1e-10 * radius  # the path stays on S
    assert (result.level_error <= 1e-10 * radius ** 2).all()
    torch.testing.assert_close(result.path[0], x0)
    torch.testing.assert_close(result.path[-1], x1)
    torch.testing.assert_close(result.euclidean, (x1 - x0).norm(dim=1))


def test_geodesic_from_a_crooked_start_shortens_to_the_great_circle():
    gen = torch.Generator().manual_seed(0)
    radius = 1.5
    x0, x1 = points_on_sphere(4, 5, radius, gen), points_on_sphere(4, 5, radius, gen)
    great_circle = radius * torch.arccos(((x0 * x1).sum(1) / radius ** 2).clamp(-1, 1))
    t = torch.linspace(0, 1, 17, dtype=torch.float64)[:, None, None]
    init = (1 - t) * x0 + t * x1 + 4 * t * (1 - t) * radius * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    crooked = level_set_path_length(norm_f, init, refine=20)
    assert (crooked >= 1.05 * great_circle).all()                        # a real detour to remove
    result = geodesic_distance(norm_f, x0, x1, init=init, iters=3000)
    assert ((result.length - great_circle).abs() <= 0.01 * great_circle).all()


def test_geodesic_on_a_hyperplane_is_the_segment():
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    f = lambda z: z @ w    # noqa: E731
    x0 = torch.tensor([[1.0, 1.0, 2.0]], dtype=torch.float64)
    x1 = x0 + torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)       # w . (x1 - x0) = 0
    result = geodesic_distance(f, x0, x1, n_points=9, iters=50)
    torch.testing.assert_close(result.length, result.euclidean)


def test_level_set_path_length_of_an_attack_like_path_bounds_the_geodesic():
    gen = torch.Generator().manual_seed(3)
    x0, x1 = points_on_sphere(2, 5, 2.0, gen), points_on_sphere(2, 5, 2.0, gen)
    t = torch.linspace(0, 1, 30, dtype=torch.float64)[:, None, None]
    noisy = (1 - t) * x0 + t * x1 + 0.05 * torch.randn(30, 2, 5, generator=gen, dtype=torch.float64)
    noisy[0], noisy[-1] = x0, x1
    on_s = level_set_path_length(norm_f, noisy, refine=4)
    great_circle = 2.0 * torch.arccos(((x0 * x1).sum(1) / 4.0).clamp(-1, 1))
    assert (on_s >= great_circle * (1 - 1e-3)).all()
    coarse = level_set_path_length(norm_f, noisy)
    assert (coarse <= on_s).all() and (coarse >= on_s * (1 - 1e-2)).all()   # chord error is small


def test_geodesic_refuses_bad_input():
    x = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="same shape"):
        geodesic_distance(norm_f, x, torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="step"):
        geodesic_distance(norm_f, x, -x, step=0.9)
    with pytest.raises(ValueError, match="grad f = 0"):
        project_to_level_set(lambda z: (z ** 2).sum(1), torch.zeros(2, 3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        path_length(torch.full((3, 2, 2), math.nan))
