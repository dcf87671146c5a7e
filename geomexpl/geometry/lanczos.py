"""Batched torch-native Lanczos with full reorthogonalisation (the GPU path of the curvature code).

B symmetric operators A_b of size n are handled at once: ``matvec`` maps [B, n] to [B, n], so each
Lanczos step costs one batched product (one batched HVP). With Q_m = [q_1 .. q_m] orthonormal and
A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T, the Ritz pairs (theta_i, Q_m s_i) of the tridiagonal T_m have
residual |A y - theta y| = |beta_m s_{m,i}| (exact arithmetic; full reorthogonalisation keeps it so).
A step with beta_m ~ 0 found an invariant subspace: the run continues from a fresh random vector
orthogonal to Q_m (T_m becomes block diagonal), so eigenvalues missed by the start vector still appear.
The run stops once every example's k wanted Ritz values have residual <= tol * max|theta|.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

WHICH = ("LM", "LA", "SA")


@dataclass
class LanczosResult:
    """values [B, k] (ordered by ``which``), vectors [B, k, n], residuals [B, k] = |beta_m s_{m,i}|,
    steps: the number of batched products taken (each example used all of them), converged: whether
    every example reached tol (False when maxiter stopped the run first)."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    steps: int
    converged: bool


def select(values: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """Indices [.., k] of the wanted eigenvalues: 'LM' by |value| descending, 'LA' descending,
    'SA' ascending."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    key = {"LM": values.abs(), "LA": values, "SA": -values}[which]
    return key.argsort(dim=-1, descending=True, stable=True)[..., :k]


def batched_lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, batch: int, k: int,
            which: str = "LM", tol: float = 1e-8, maxiter: int | None = None,
            dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
            seed: int = 0) -> LanczosResult:
    """k extremal eigenpairs of B symmetric n x n operators given by a batched ``matvec``."""
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the operator size n={n}, got {k}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    select(torch.zeros(1), 1, which)
    limit = n if maxiter is None else max(k, min(n, maxiter))
    gen = torch.Generator().manual_seed(seed)
    basis = torch.zeros(batch, limit + 1, n, dtype=dtype, device=device)
    basis[:, 0] = _normalise(torch.randn(batch, n, generator=gen, dtype=dtype).to(device))
    alpha = torch.zeros(batch, limit, dtype=dtype)
    beta = torch.zeros(batch, limit, dtype=dtype)
    converged = False
    block_start = torch.zeros(batch, dtype=torch.long)     # first step of the current Krylov block
    for j in range(limit):
        w = matvec(basis[:, j]).to(dtype=dtype, device=basis.device)
        if w.shape != (batch, n):
            raise ValueError(f"matvec must return [B, n] = {(batch, n)}, got {tuple(w.shape)}")
        alpha[:, j] = (basis[:, j] * w).sum(1).cpu()
        w = _orthogonalise(w, basis[:, : j + 1])
        norm = w.norm(dim=1)
        beta[:, j] = norm.cpu()
        steps = j + 1
        if steps == n:
            converged = True
            break
        scale = torch.maximum(alpha[:, : j + 1].abs().amax(1), beta[:, : j + 1].amax(1))
        broken = (norm.cpu() <= 1e3 * torch.finfo(dtype).eps * scale.clamp_min(torch.finfo(dtype).tiny))
        if broken.any():  # invariant subspace: restart orthogonally, decouple T_m
            fresh = _orthogonalise(torch.randn(batch, n, generator=gen, dtype=dtype).to(device),
                                   basis[:, : j + 1])
            w = torch.where(broken.to(w.device)[:, None], fresh, w)
            beta[:, j] = torch.where(broken, torch.zeros(()), beta[:, j])
            block_start = torch.where(broken, steps, block_start)
        basis[:, j + 1] = _normalise(w)
        converged = (steps >= k and bool((block_start < steps).all())
                     and _converged(alpha[:, :steps], beta[:, :steps], block_start, k, which, tol))
        if converged:
            break
    theta, s = _ritz(alpha[:, :steps], beta[:, :steps])
    idx = select(theta, k, which)
    values = theta.gather(1, idx)
    s_sel = s.gather(2, idx[:, None, :].expand(-1, steps, -1))
    residuals = (beta[:, steps - 1, None] * s_sel[:, -1]).abs()
    if steps == n:
        residuals = torch.zeros_like(residuals)
    vectors = torch.bmm(s_sel.to(basis.device).transpose(1, 2), basis[:, :steps])
    return LanczosResult(values.to(device), vectors, residuals.to(device), steps, converged)


def _ritz(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    return torch.linalg.eigh(t)


def _converged(alpha: torch.Tensor, beta: torch.Tensor, block_start: torch.Tensor, k: int, which: str,
               tol: float) -> bool:
    """The k wanted Ritz values have converged, and so have the extreme ('LM': both ends) Ritz values
    of the Krylov block begun after the last restart, so that a multiple eigenvalue or a part of the
    spectrum the start vector missed cannot hide behind an early stop."""
    theta, s = _ritz(alpha, beta)
    scale = theta.abs().amax(1).clamp_min(torch.finfo(theta.dtype).tiny) * tol
    res = (beta[:, -1, None] * s[:, -1]).abs()
    if (res.gather(1, select(theta, k, which)) > scale[:, None]).any():
        return False
    for b in (block_start > 0).nonzero().flatten().tolist():
        start = int(block_start[b])
        theta_b, s_b = _ritz(alpha[b:b + 1, start:], beta[b:b + 1, start:])
        ends = [0, -1] if which == "LM" else [-1] if which == "LA" else [0]
        if ((beta[b, -1] * s_b[0, -1, ends]).abs() > scale[b]).any():
            return False
    return True


def _orthogonalise(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Remove the span of the rows of q [B, m, n] from w [B, n]: classical Gram-Schmidt, twice."""
    for _ in range(2):
        w = w - torch.bmm(q.transpose(1, 2), torch.bmm(q, w[:, :, None]))[:, :, 0]
    return w


def _normalise(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
