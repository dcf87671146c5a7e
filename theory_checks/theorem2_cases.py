"""Random problem instances of the Theorem 2 check: a weight vector w, points x and beta (eq. (21))."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Case:
    """One weight vector w [d], M points x [M, d] and beta."""

    w: torch.Tensor
    x: torch.Tensor
    beta: float


def random_cases(rng: np.random.Generator, count: int, points: int, single_weight: bool) -> list[Case]:
    """d in 1..100 (2..100 for dense w), beta log-uniform in [0.1, 10], |w| log-uniform in [0.2, 5].

    Dense weights are sign(g)|g|^q, g ~ N(0, 1), q ~ U(0, 3), which spans equal magnitudes (q = 0)
    to a few dominant weights. Points are placed at beta t ~ U(-3, 3) along u = w/|w| (so that
    P(S < t) lies in [0.047, 0.953], where the normal approximation of the MC mean is good) plus
    a random orthogonal part.
    """
    cases = []
    for _ in range(count):
        d = int(rng.integers(1 if single_weight else 2, 101))
        beta = float(np.exp(rng.uniform(math.log(0.1), math.log(10.0))))
        if single_weight:
            w = np.zeros(d)
            w[rng.integers(d)] = rng.choice([-1.0, 1.0])
        else:
            g = rng.standard_normal(d)
            w = np.sign(g) * np.abs(g) ** rng.uniform(0.0, 3.0)
        w = w / np.linalg.norm(w) * np.exp(rng.uniform(math.log(0.2), math.log(5.0)))
        u = w / np.linalg.norm(w)
        t = rng.uniform(-3.0, 3.0, points) / beta
        x = rng.standard_normal((points, d)) * 3.0 / beta
        x += (t - x @ u)[:, None] * u
        cases.append(Case(torch.as_tensor(w), torch.as_tensor(x), beta))
    return cases
