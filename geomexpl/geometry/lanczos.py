"""Batched, restarted (block) Lanczos in torch with bounded memory: the device path of the curvature code.

B symmetric n x n operators A_b are handled at once: ``matvec`` maps [B, n] to [B, n], so one
product is one batched HVP. The solver keeps at most m Krylov vectors per example (the subspace
size, default from k, not n): memory O(B m n), estimated and checked against ``max_bytes`` before
anything is allocated.

Method (thick-restart Lanczos, Wu & Simon 2000; block size p >= 1 gives block Lanczos):
* Q = [q_1 .. q_s] is orthonormal, and every column of Q except the last block has A q in the span of Q
  and the pending block P (orthonormal to Q). Each step takes P's p products W = A P, appends P to Q,
  records the exact Rayleigh quotient column H[:, new] = Q^T W (the dot products of the full
  reorthogonalisation, classical Gram-Schmidt twice), and makes the rest of W the next pending
  block: W - Q Q^T W = P' R (QR). Hence A Q = Q H + P' R E^T, and a Ritz pair (theta, Q s) of H has
  residual |A y - theta y| = |R s_last| (s_last: the last p entries of s).
* A restart (the basis is full) keeps the ``keep`` wanted Ritz vectors Y = Q S: A Y = Y Theta + P' R S_last^T,
  so H restarts as diag(Theta) and the relation above still holds with the same P'.
* An invariant subspace (|W| <= max(1e3 eps, tol) max|H|: low rank, repeated eigenvalues) needs no
  branch: every step adds delta f to W, f a fresh random vector orthogonal to Q and delta = 100 eps max|H|,
  so P' is then a new random direction, and every residual estimate is off by at most delta. Where it
  happened is recorded on the device (``block_start``), and convergence then also asks: of a Krylov block
  begun there and still open, that its extreme Ritz values converged; of one that closed at the last
  step (its Ritz values are then every distinct eigenvalue of A on the complement of the earlier blocks),
  that none beats the k-th wanted value. So a multiple eigenvalue the start vector missed cannot hide
  behind an early stop. A restarted single-vector run still finds the copies of a multiple eigenvalue
  only through such closures or rounding: for clustered spectra use a block size p >= the multiplicity.

Host syncs: none per step. Convergence (the k wanted Ritz residuals <= tol * max|theta|) is decided
on the device every ``check_every`` steps and at each restart: one scalar read per check (counted in
tests/test_geometry_lanczos.py), plus a read of the breakdown positions in the rare final checks
where an example met an invariant subspace. The small eigenproblems (eigh of the <= (m + p)^2 matrix H)
run on the device too; on CUDA, torch.linalg.eigh adds its own error-check sync to each check.
Randomness (start block, fresh vectors) comes from a generator on the device where the device has
one; otherwise from a CPU generator, one upload per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

WHICH = ("LM", "LA", "SA")
MAX_BYTES = 2 * 1024 ** 3   # default budget of the solver's own storage (the matvec's memory is not counted)


@dataclass
class LanczosResult:
    """values [B, k] (ordered by ``which``), vectors [B, k, n], residuals [B, k] = |R s_last|,
    steps: the number of batched products taken (each example used all of them), converged: whether
    every example reached tol (False when maxiter stopped the run first), restarts, checks: the number
    of convergence checks (host syncs)."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    steps: int
    converged: bool
    restarts: int = 0
    checks: int = 0


def select(values: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """Indices [.., k] of the wanted eigenvalues: 'LM' by |value| descending, 'LA' descending,
    'SA' ascending."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    key = {"LM": values.abs(), "LA": values, "SA": -values}[which]
    return key.argsort(dim=-1, descending=True, stable=True)[..., :k]


def default_subspace(k: int, block: int = 1) -> int:
    """m = max(2k + 1, 20) vectors (ARPACK's ncv) for p = 1; at least k + 4p for block size p."""
    return max(2 * k + 1, 20, k + 4 * block)


def memory_estimate(n: int, batch: int, k: int, subspace: int, block: int = 1,
                    dtype: torch.dtype = torch.float64) -> int:
    """Bytes the solver allocates: the basis (m + p vectors), the work block with its random partner
    (4p), the restart copy (<= m) and the returned Ritz vectors (k), each [B, n]; plus H."""
    item = torch.finfo(dtype).bits // 8
    return item * (batch * n * (2 * subspace + 5 * block + k) + 2 * batch * (subspace + block) ** 2)


def batched_lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, batch: int, k: int,
                    which: str = "LM", tol: float = 1e-8, maxiter: int | None = None,
                    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                    seed: int = 0, subspace: int | None = None, block: int = 1,
                    check_every: int | None = None, max_bytes: int = MAX_BYTES) -> LanczosResult:
    """k extremal eigenpairs of B symmetric n x n operators given by a batched ``matvec``.

    subspace: m, the most Krylov vectors kept per example (default :func:`default_subspace`; m >= n
    means the whole space: no restart, no early stop, the exact answer after n products, even for
    multiple eigenvalues, which a restarted single-vector run may miss: see ``block``). block: p, the block size (products per
    step). maxiter: the most batched products (default 100 m). check_every: steps between
    convergence checks (default 1 on the CPU, where a check costs no device sync, else 4).
    """
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the operator size n={n}, got {k}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    select(torch.zeros(1), 1, which)
    m = default_subspace(k, block) if subspace is None else subspace
    if m >= n:           # the whole space fits: no restart, exact after n products
        m, block = n, 1
    elif m < k + 2 * block:
        raise ValueError(f"subspace={m} is too small for k={k} and block={block}: a restart keeps k vectors "
                         f"and each step adds {block}; use subspace >= k + 2 * block = {k + 2 * block}")
    need = memory_estimate(n, batch, k, m, block, dtype)
    if need > max_bytes:
        raise MemoryError(f"batched_lanczos would allocate {need / 2**30:.2f} GiB (batch={batch}, n={n}, "
                          f"subspace={m}, block={block}, {dtype}), above max_bytes={max_bytes / 2**30:.2f} GiB; "
                          "lower the subspace or the batch, or raise max_bytes")
    maxiter = 100 * m if maxiter is None else max(k, maxiter)
    device = torch.device("cpu") if device is None else torch.device(device)
    check_every = (1 if device.type == "cpu" else 4) if check_every is None else max(1, check_every)
    return _Solver(matvec, n, batch, k, which, tol, m, block, dtype, device, seed).run(maxiter, check_every)


class _Solver:
    """State of one run: basis [B, m + p, n], H [B, m + p, m + p], s active vectors, the pending block."""

    def __init__(self, matvec, n, batch, k, which, tol, m, p, dtype, device, seed):
        self.matvec, self.n, self.batch, self.k, self.which, self.tol = matvec, n, batch, k, which, tol
        self.m, self.p, self.dtype = m, p, dtype
        self.keep = min(m - p, max(k, k + (m - k) // 2 - p))   # Ritz vectors kept at a restart
        self.gen = _generator(device, seed)
        self.basis = torch.zeros(batch, m + p, n, dtype=dtype, device=device)
        self.h = torch.zeros(batch, m + p, m + p, dtype=dtype, device=device)
        self.r = torch.zeros(batch, p, p, dtype=dtype, device=device)       # R of the last step
        self.scale = torch.zeros(batch, dtype=dtype, device=device)         # max |H| so far
        self.block_start = torch.zeros(batch, dtype=torch.long, device=device)   # fresh Krylov block starts
        self.prev_start = torch.zeros(batch, dtype=torch.long, device=device)
        self.basis[:, :p] = _orthonormal(self._random())
        self.s = 0

    def _random(self) -> torch.Tensor:
        out = torch.randn(self.batch, self.p, self.n, generator=self.gen, dtype=self.dtype,
                          device=self.gen.device)
        return out.to(self.basis.device)

    def run(self, maxiter: int, check_every: int) -> LanczosResult:
        products = restarts = checks = step = 0
        converged = False
        while products < maxiter:
            exact = self._step()
            products += self.p
            step += 1
            if exact:
                converged = True
                break
            full = self.s + self.p > self.m
            if self.m == self.n and products < maxiter:    # the whole space: no early stop, exact at n
                continue
            if full or step % check_every == 0 or products >= maxiter:
                checks += 1
                theta, vecs = torch.linalg.eigh(self.h[:, :self.s, :self.s])
                if self._converged(theta, vecs):
                    converged = True
                    break
                if full:
                    self._restart(theta, vecs)
                    restarts += 1
        values, vectors, residuals = self._ritz(exact=converged and self.s == self.n)
        return LanczosResult(values, vectors, residuals, products, converged, restarts, checks)

    def _step(self) -> bool:
        """Products with the pending block, its H column, the next pending block; True when Q spans R^n."""
        s, p = self.s, self.p
        pending = self.basis[:, s:s + p]
        w = torch.stack([self.matvec(pending[:, i]) for i in range(p)], dim=1)
        if w.shape != (self.batch, p, self.n):
            raise ValueError(f"matvec must return [B, n] = {(self.batch, self.n)}, got {tuple(w.shape[::2])}")
        w = w.to(dtype=self.dtype, device=self.basis.device)
        self.s = s = s + p
        q = self.basis[:, :s]
        work, coef = _orthogonalise(torch.cat([w, self._random()], dim=1), q)
        col = coef[:, :, :p]
        col[:, s - p:] = (col[:, s - p:] + col[:, s - p:].transpose(1, 2)) / 2   # the symmetric diagonal block
        self.h[:, :s, s - p:s] = col
        self.h[:, s - p:s, :s] = col.transpose(1, 2)
        if s == self.n:
            return True
        self.scale = torch.maximum(self.scale, col.abs().amax((1, 2)))
        w, fresh = work[:, :p], work[:, p:]
        eps = torch.finfo(self.dtype).eps
        unit = torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale))[:, None, None]
        broken = w.norm(dim=2).amin(1) <= max(1e3 * eps, self.tol) * unit[:, 0, 0]   # invariant to tolerance
        self.prev_start = torch.where(broken, self.block_start, self.prev_start)
        self.block_start = torch.where(broken, s, self.block_start)
        w = w + 100 * eps * unit * _orthonormal(fresh)
        nxt, self.r = _qr_rows(w)
        self.basis[:, s:s + p] = nxt
        return False

    def _residuals(self, vecs: torch.Tensor) -> torch.Tensor:
        """|R s_last| for every Ritz vector (columns of vecs [B, s, s])."""
        return (self.r @ vecs[:, -self.p:]).norm(dim=1)

    def _converged(self, theta: torch.Tensor, vecs: torch.Tensor) -> bool:
        """One host sync: the k wanted Ritz residuals are <= tol * max|theta|. Examples that met an
        invariant subspace need one more (the guard in the module docstring): a Krylov block still
        open (started at a breakdown) needs its extreme Ritz values converged; a fresh block that
        closed at the last step (it met an invariant subspace again, so its Ritz values are all the
        distinct eigenvalues of A on the complement of the earlier ones) must not beat the k-th wanted one."""
        if self.s < self.k:
            return False
        limit = theta.abs().amax(1).clamp_min(torch.finfo(self.dtype).tiny) * self.tol
        wanted = select(theta, self.k, self.which)
        ok = (self._residuals(vecs).gather(1, wanted) <= limit[:, None]).all()
        state = int(torch.where(ok, 1 + (self.block_start > 0).any().long(), 0))   # the sync
        if state < 2:
            return state == 1
        flags = torch.stack([self.block_start, self.prev_start]).tolist()           # breakdowns only
        key = {"LM": torch.abs, "LA": lambda t: t, "SA": torch.neg}[self.which]
        for b, (start, prev) in enumerate(zip(*flags)):
            if start == self.s:      # closed fresh block [prev, s): exact eigenvalues
                block = torch.linalg.eigvalsh(self.h[b, prev:self.s, prev:self.s])
                kth = key(theta[b].gather(0, wanted[b, -1:]))
                if bool(key(block).amax() > kth[0] + limit[b]):
                    return False
            elif start > 0:          # open block [start, s)
                _, tail = torch.linalg.eigh(self.h[b:b + 1, start:self.s, start:self.s])
                ends = [0, -1] if self.which == "LM" else [-1] if self.which == "LA" else [0]
                res = (self.r[b:b + 1] @ tail[:, -self.p:]).norm(dim=1)[0, ends]
                if bool((res > limit[b]).any()):
                    return False
        return True

    def _restart(self, theta: torch.Tensor, vecs: torch.Tensor) -> None:
        """Keep the ``keep`` wanted Ritz vectors; the pending block moves down after them."""
        idx = select(theta, self.keep, self.which)
        kept = vecs.gather(2, idx[:, None, :].expand(-1, self.s, -1))
        y = kept.transpose(1, 2) @ self.basis[:, :self.s]
        pending = self.basis[:, self.s:self.s + self.p].clone()
        self.basis[:, :self.keep] = y
        self.basis[:, self.keep:self.keep + self.p] = pending
        self.h.zero_()
        self.h[:, :self.keep, :self.keep] = torch.diag_embed(theta.gather(1, idx))
        self.block_start.zero_()
        self.prev_start.zero_()
        self.s = self.keep

    def _ritz(self, exact: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        theta, vecs = torch.linalg.eigh(self.h[:, :self.s, :self.s])
        idx = select(theta, self.k, self.which)
        chosen = vecs.gather(2, idx[:, None, :].expand(-1, self.s, -1))
        vectors = chosen.transpose(1, 2) @ self.basis[:, :self.s]
        residuals = self._residuals(chosen)
        return theta.gather(1, idx), vectors, torch.zeros_like(residuals) if exact else residuals


def _generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded generator on the device where it has one, else on the CPU (one upload per step)."""
    try:
        return torch.Generator(device=device).manual_seed(seed)
    except (RuntimeError, TypeError):
        return torch.Generator().manual_seed(seed)


def _orthogonalise(w: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the span of the rows of q [B, s, n] from the rows of w [B, c, n] by classical
    Gram-Schmidt, twice; returns (w - q^T C, C) with C = q w^T [B, s, c] summed over both passes."""
    total = None
    for _ in range(2):
        coef = q @ w.transpose(1, 2)
        w = w - coef.transpose(1, 2) @ q
        total = coef if total is None else total + coef
    return w, total


def _orthonormal(w: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning the rows of w [B, c, n]."""
    return _qr_rows(w)[0]


def _qr_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w = R^T Q with Q [B, c, n] orthonormal rows and R [B, c, c] upper triangular (c = 1: a norm)."""
    if w.shape[1] == 1:
        norm = w.norm(dim=2, keepdim=True)
        return w / norm.clamp_min(torch.finfo(w.dtype).tiny), norm
    q, r = torch.linalg.qr(w.transpose(1, 2))
    return q.transpose(1, 2), r
