"""The restarted torch Lanczos: bounded memory at n = 200,000, agreement with eigsh and the dense
oracle, the block solver on a multiple eigenvalue, and the host syncs per step."""
from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.utils._python_dispatch import TorchDispatchMode

from geomexpl.geometry.lanczos import batched_lanczos, default_subspace, memory_estimate

SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "item"}


class PeakMemory(TorchDispatchMode):
    """Peak bytes of the tensor storages that ops create while active (views share a storage)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        key = t.untyped_storage().data_ptr()
        if key not in self.live:
            self.live[key] = [t.untyped_storage().nbytes(), 0]
            self.now += self.live[key][0]
            self.peak = max(self.peak, self.now)
        self.live[key][1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.now -= entry[0]
                del self.live[key]


class SyncCounter(TorchDispatchMode):
    """Counts ops that copy a device scalar to the host (a sync on an accelerator)."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.syncs += func.__name__.split(".")[0] in SYNC_OPS
        return func(*args, **(kwargs or {}))


def diagonal(eig: torch.Tensor):
    return lambda v: eig * v


def test_n_200000_in_bounded_memory_with_known_eigenvalues():
    """Diagonal (distinct spectrum, batch 2, peak memory measured) and identity-plus-low-rank (eigenvalues
    4.5 twice, -2.5, and 0.5 199,997 times, so each Krylov block closes after <= 3 products) at n = 200,000."""
    n, gen = 200_000, torch.Generator().manual_seed(0)
    eig = torch.rand(2, n, generator=gen, dtype=torch.float64)
    eig[:, :6] = torch.tensor([[3.0, -2.9, 2.8, 2.7, -2.6, 2.5], [5.0, 4.0, -3.5, 3.0, 2.0, 1.5]])
    u = torch.linalg.qr(torch.randn(n, 3, generator=gen, dtype=torch.float64))[0].T      # [3, n] orthonormal
    c = torch.tensor([4.0, 4.0, -3.0], dtype=torch.float64)

    def low_rank(v):   # 0.5 I + U^T diag(c) U: eigenvalues 4.5 (twice), -2.5 and 0.5 (n - 3 times)
        return 0.5 * v + ((v @ u.T) * c) @ u

    m = default_subspace(5)
    bound = memory_estimate(n, 2, 5, m)
    assert bound <= 8 * 2 * n * (2 * m + 10) + 2 * 8 * 30 ** 2    # O(B m n): 0.16 GB, not [B, n + 1, n] (640 GB)
    with PeakMemory() as mem:
        res = batched_lanczos(diagonal(eig), n, 2, 5, tol=1e-10, max_bytes=bound)
    assert res.converged and res.vectors.shape == (2, 5, n)
    torch.testing.assert_close(res.values.abs(), eig[:, :5].abs(), rtol=0, atol=1e-9)
    assert mem.peak <= bound + 4 * 2 * n * 8            # + the matvec's own temporaries
    for k, want in ((2, [4.5, 4.5]), (5, [4.5, 4.5, -2.5, 0.5, 0.5])):
        # k = 2: the first Krylov block {4.5, -2.5, 0.5} closes with exact, wrong top-2; the guard continues
        res = batched_lanczos(low_rank, n, 1, k, tol=1e-10)
        assert res.converged
        torch.testing.assert_close(res.values, torch.tensor([want], dtype=torch.float64), rtol=0, atol=1e-9)
    with pytest.raises(MemoryError, match="would allocate .* GiB .* above max_bytes"):
        batched_lanczos(diagonal(eig), n, 2, 5, max_bytes=bound - 1)


@settings(deadline=None, max_examples=6)
@given(n=st.integers(40, 150), k=st.integers(1, 6), block=st.sampled_from((1, 1, 3)), seed=st.integers(0, 2**16),
       which=st.sampled_from(("LM", "LA", "SA")))
def test_restarted_lanczos_matches_eigsh_and_the_dense_oracle(n, k, block, seed, which):
    """n > the subspace (default 20-25 vectors), so every run restarts; batch 3 of random symmetric matrices."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, n, n, generator=gen, dtype=torch.float64)
    a = (a + a.transpose(1, 2)) / 2
    res = batched_lanczos(lambda v: (a @ v[..., None])[..., 0], n, 3, k, which=which, tol=1e-10, block=block)
    assert res.converged
    dense = torch.linalg.eigvalsh(a)
    key = {"LM": -dense.abs(), "LA": -dense, "SA": dense}[which]
    oracle = dense.gather(1, key.argsort(dim=1, stable=True)[:, :k])
    scale = dense.abs().amax()
    torch.testing.assert_close(res.values, oracle, rtol=0, atol=1e-8 * scale)
    for b in range(3):
        op = LinearOperator((n, n), matvec=lambda y: a[b].numpy() @ y, dtype=np.float64)
        ref = eigsh(op, k=k, which=which, tol=1e-12, v0=np.ones(n))[0]
        np.testing.assert_allclose(np.sort(res.values[b].numpy()), np.sort(ref), atol=1e-8 * float(scale))
    lhs = torch.einsum("bij,bkj->bki", a, res.vectors)
    assert ((lhs - res.values[..., None] * res.vectors).norm(dim=-1) <= 1e-8 * scale).all()


def test_block_solver_converges_in_fewer_products_on_a_multiple_eigenvalue():
    """Top eigenvalue 1 five times over a bulk in [0, 0.9] (n = 3000). A single-vector Krylov space holds
    one vector of the 5-dim eigenspace; plain Lanczos finds the other copies only through rounding and
    restarts, the block solver (p = 5) sees all five at once."""
    n, gen = 3000, torch.Generator().manual_seed(1)
    eig = 0.9 * torch.rand(1, n, generator=gen, dtype=torch.float64)
    eig[0, :5] = 1.0
    block = batched_lanczos(diagonal(eig), n, 1, 5, tol=1e-4, block=5)
    plain = batched_lanczos(diagonal(eig), n, 1, 5, tol=1e-4)
    assert block.converged and plain.converged
    torch.testing.assert_close(block.values, torch.ones(1, 5, dtype=torch.float64), rtol=0, atol=1e-6)
    assert block.steps < 0.7 * plain.steps, (block.steps, plain.steps)     # 130 against 239 products


def test_host_syncs_are_one_per_check_not_per_step():
    """check_every = 4: exactly one scalar read per convergence check (a check at every 4th step and at
    each restart), none inside the steps; check_every = 1 reads once per step."""
    n, gen = 5000, torch.Generator().manual_seed(2)
    eig = torch.rand(2, n, generator=gen, dtype=torch.float64)
    for every in (4, 1):
        with SyncCounter() as counter:
            res = batched_lanczos(diagonal(eig), n, 2, 3, tol=1e-6, check_every=every)
        assert res.converged and res.checks <= res.steps // every + res.restarts + 1
        assert counter.syncs <= res.checks, (counter.syncs, res.checks, res.steps)
    assert res.checks >= res.steps - 3           # check_every = 1


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="subspace=6 is too small"):
        batched_lanczos(diagonal(torch.ones(1, 100)), 100, 1, 5, subspace=6)
    with pytest.raises(ValueError, match="block must be >= 1"):
        batched_lanczos(diagonal(torch.ones(1, 100)), 100, 1, 5, block=0)
    with pytest.raises(ValueError, match=r"matvec must return \[B, n\]"):
        batched_lanczos(lambda v: v[:, :-1], 100, 1, 2)
