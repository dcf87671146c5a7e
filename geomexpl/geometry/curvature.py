"""Shape operator and principal curvatures of the level set S = {f = f(p)} (paper sec. 3).

Sign convention (paper sec. 3): the second fundamental form is L(u, v) = <v, D_u n> with
n = grad f / |grad f|. Since D_u n = P H u / |grad f| with P = I - n n^T, on T_pS

    L = P H P / |grad f|,

so the sphere f(x) = |x| of radius r has all principal curvatures +1/r, and replacing f by a f + b
with a < 0 flips n and every sign. (The Weingarten map -D_u n is -P H P / |grad g|, the negative of L;
the sign used here is L's, as above.)

Excluding the normal direction exactly (deflation): the Householder reflection Q = I - 2 v v^T with
v = (n + s e_d) / |n + s e_d|, s = sign(n_d), maps n to -s e_d, so its first d-1 columns U are an
orthonormal basis of T_pS = n^perp. The shape operator is the (d-1) x (d-1) symmetric matrix
U^T H U / |grad f|, applied matrix-free: pad y with a 0, reflect (O(d)), one HVP, reflect, drop the
last coordinate. The normal is not in the operator's domain, so it can never show up as a spurious
zero eigenvalue, and no shift has to be tuned.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from geomexpl.checks import check_smooth, check_tensor
from geomexpl.geometry.derivatives import HessianVectorProduct, ScalarFunction, gradient_norm, hessian
from geomexpl.geometry.lanczos import WHICH, batched_lanczos, select


class TangentBasis:
    """Orthonormal basis U of T_pS per example: the first d-1 columns of a Householder reflection
    (``normal`` [B, ...] must be unit; it is used in float64)."""

    def __init__(self, normal: torch.Tensor):
        n = normal.flatten(1).double()
        sign = torch.where(n[:, -1] >= 0, 1.0, -1.0).to(n)
        v = n.clone()
        v[:, -1] += sign
        self.v = v / v.norm(dim=1, keepdim=True)
        self.normal = n

    def _reflect(self, u: torch.Tensor) -> torch.Tensor:
        v = self.v.view(self.v.shape[0], *[1] * (u.dim() - 2), -1)
        return u - 2 * (u * v).sum(-1, keepdim=True) * v

    def embed(self, y: torch.Tensor) -> torch.Tensor:
        """U y: [B, ..., d-1] tangent coordinates -> [B, ..., d] ambient vectors."""
        return self._reflect(torch.nn.functional.pad(y, (0, 1)))

    def restrict(self, u: torch.Tensor) -> torch.Tensor:
        """U^T u: [B, ..., d] ambient vectors -> [B, ..., d-1] tangent coordinates."""
        return self._reflect(u)[..., :-1]


class ShapeOperator:
    """L = U^T H U / |grad f| on T_pS for a batch, in float64; H v by a graph-reusing HVP."""

    def __init__(self, f: ScalarFunction, x: torch.Tensor):
        self.hvp = HessianVectorProduct(f, x)
        self.grad_norm = gradient_norm(self.hvp.gradient.double())
        self.normal = self.hvp.gradient.double() / self.grad_norm.view(-1, *[1] * (x.dim() - 1))
        self.basis = TangentBasis(self.normal)
        self.shape = x.shape
        self.dim = x[0].numel() - 1

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """L y for y [B, d-1] (float64, one vector per example)."""
        u = self.basis.embed(y.to(self.basis.v))
        hu = self.hvp(u.view(self.shape)).flatten(1).double()
        return self.basis.restrict(hu) / self.grad_norm[:, None]

    def linear_operators(self) -> list[LinearOperator]:
        """One scipy LinearOperator (float64, CPU) per example; each product is a batched HVP."""
        return [self._scipy(b) for b in range(self.shape[0])]

    def _scipy(self, b: int) -> LinearOperator:
        def matvec(y: np.ndarray) -> np.ndarray:
            full = torch.zeros(self.shape[0], self.dim, dtype=torch.float64, device=self.basis.v.device)
            full[b] = torch.as_tensor(np.asarray(y).ravel(), device=full.device)
            return self(full)[b].cpu().numpy()

        return LinearOperator((self.dim, self.dim), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def shape_operator(f: ScalarFunction, x: torch.Tensor) -> list[LinearOperator]:
    """Per example, the second fundamental form L = P H P / |grad f| on T_pS as a (d-1)-dimensional
    float64 scipy LinearOperator in the Householder basis (module docstring). f is evaluated on the
    whole batch once; each product is one batched HVP with zero vectors for the other examples."""
    check_tensor(x, "x", min_dim=1)
    return ShapeOperator(f, x).linear_operators()


@dataclass
class CurvatureInfo:
    """n_hvp [B]: HVPs the eigensolver used per example; residuals [B, k]: |L y - kappa y| for the
    returned unit pairs, checked with k extra HVPs not counted in n_hvp; directions [B, k, ...]:
    principal directions in input space (unit, orthogonal to n); normal [B, ...] and grad_norm [B];
    all float64."""

    n_hvp: torch.Tensor
    residuals: torch.Tensor
    directions: torch.Tensor
    normal: torch.Tensor
    grad_norm: torch.Tensor


def principal_curvatures(f: ScalarFunction, x: torch.Tensor, k: int = 6, which: str = "LM",
                         tol: float = 1e-6, method: str = "lanczos", maxiter: int | None = None,
                         max_dense_dim: int = 4096, seed: int = 0, block: int = 1,
                         subspace: int | None = None) -> tuple[torch.Tensor, CurvatureInfo]:
    """k principal curvatures kappa [B, k] (float64, x's device) of S at each example of x.

    Order: which='LM' by |kappa| descending (the paper's lambda_max first), 'LA' descending,
    'SA' ascending. method='lanczos': scipy eigsh on the LinearOperator in float64 (tol is eigsh's
    relative tolerance), one example at a time; 'torch': the batched thick-restart torch Lanczos of
    ``geometry.lanczos`` (one batched HVP per product, tol relative to max|kappa|, memory O(B m d) for
    ``subspace`` = m Krylov vectors, default from k; ``block`` = p > 1: block Lanczos, for multiple
    eigenvalues, see docs/curvature_solvers.md); 'dense': full Hessian oracle, d <= max_dense_dim only.
    Every product reuses the first-order graph of grad f built once per call (exact: x is fixed).
    Products run in x's dtype: a float32 network gives the curvatures to the accuracy of its float32
    Hessian, which is poor where grad f is tiny (random weights: docs/curvature_solvers.md, Precision);
    pass a float64 model and x for reference values.
    """
    check_tensor(x, "x", min_dim=1)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    d = x[0].numel()
    if d < 2:
        raise ValueError(f"a level set needs input dimension d >= 2, got d={d}")
    if not 1 <= k <= d - 1:
        raise ValueError(f"k must be between 1 and d-1={d - 1} (the dimension of T_pS), got {k}")
    solvers = {"lanczos": _by_eigsh, "torch": _by_torch_lanczos, "dense": _by_dense}
    if method not in solvers:
        raise ValueError(f"method must be one of {tuple(solvers)}, got {method!r}")
    if getattr(f, "model", None) is not None:  # f = logit(model, k)
        check_smooth(f.model, x, "principal_curvatures")
    if method == "dense" and d > max_dense_dim:
        raise ValueError(f"method='dense' builds the {d}x{d} Hessian per example; d={d} exceeds "
                         f"max_dense_dim={max_dense_dim}. Use method='lanczos' or 'torch'")
    if method != "torch" and (block != 1 or subspace is not None):
        raise ValueError(f"block and subspace are options of method='torch', not of method={method!r}")
    options = dict(block=block, subspace=subspace) if method == "torch" else {}
    kappa, vectors, residuals, n_hvp, op = solvers[method](f, x, k, which, tol, maxiter, seed, **options)
    dev = x.device
    info = CurvatureInfo(n_hvp=n_hvp, residuals=residuals.to(dev),
                         directions=vectors.to(dev).view(x.shape[0], k, *x.shape[1:]),
                         normal=op.normal.to(dev), grad_norm=op.grad_norm.to(dev))
    return kappa.to(dev), info


def _by_eigsh(f, x, k, which, tol, maxiter, seed):
    """One eigsh per example on the batch's operator (f is never called on part of the batch)."""
    rng = np.random.default_rng(seed)
    op = ShapeOperator(f, x)
    n = op.dim
    kappa, vectors, n_hvp = [], [], []
    for b, linear in enumerate(op.linear_operators()):
        count = op.hvp.count
        if n <= 2 * k + 1:  # too small for ARPACK (needs k < ncv <= n): exact from n products
            matrix = np.stack([linear.matvec(e) for e in np.eye(n)], axis=1)
            vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
        else:
            vals, vecs = eigsh(linear, k=k, which=which, tol=tol, maxiter=maxiter, v0=rng.standard_normal(n))
        order = select(torch.from_numpy(vals), k, which).numpy()
        n_hvp.append(op.hvp.count - count)
        kappa.append(torch.from_numpy(vals[order]))
        vectors.append(torch.from_numpy(np.ascontiguousarray(vecs[:, order].T)))
    kappa, y = torch.stack(kappa), torch.stack(vectors).to(op.basis.v.device)
    return kappa, op.basis.embed(y), _residuals(op, y, kappa), torch.tensor(n_hvp), op


def _by_torch_lanczos(f, x, k, which, tol, maxiter, seed, block, subspace):
    op = ShapeOperator(f, x)
    res = batched_lanczos(op, op.dim, x.shape[0], k, which=which, tol=tol, maxiter=maxiter,
                          device=x.device, seed=seed, block=block, subspace=subspace)
    if not res.converged:
        warnings.warn(f"torch Lanczos stopped after {res.steps} steps before reaching tol={tol}; "
                      f"largest residual estimate {float(res.residuals.max()):.3g}", RuntimeWarning, stacklevel=3)
    n_hvp = torch.full((x.shape[0],), res.steps)
    residuals = _residuals(op, res.vectors, res.values)
    return res.values.cpu(), op.basis.embed(res.vectors), residuals, n_hvp, op


def _by_dense(f, x, k, which, tol, maxiter, seed):
    h = hessian(f, x).double()
    op = ShapeOperator(f, x)
    n = op.basis.normal
    projector = torch.eye(n.shape[1], dtype=n.dtype, device=n.device) - n[:, :, None] * n[:, None, :]
    tangent = torch.linalg.eigh(projector)[1][:, :, 1:]  # eigenvalue 1 eigenvectors span n^perp
    lmat = tangent.transpose(1, 2) @ h @ tangent / op.grad_norm[:, None, None]
    vals, vecs = torch.linalg.eigh((lmat + lmat.transpose(1, 2)) / 2)
    idx = select(vals, k, which)
    kappa = vals.gather(1, idx)
    y = vecs.gather(2, idx[:, None, :].expand(-1, vecs.shape[1], -1))
    residuals = (lmat @ y - y * kappa[:, None, :]).norm(dim=1)
    n_hvp = torch.full((x.shape[0],), x[0].numel())
    return kappa, (tangent @ y).transpose(1, 2), residuals, n_hvp, op


def _residuals(op: ShapeOperator, y: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """|L y_i - kappa_i y_i| for y [B, k, d-1], kappa [B, k] (k products, not counted in n_hvp)."""
    count = op.hvp.count
    y = y.to(op.basis.v.device)
    ly = torch.stack([op(y[:, i]) for i in range(y.shape[1])], dim=1)
    op.hvp.count = count
    return (ly - kappa.to(ly)[..., None] * y).norm(dim=-1).cpu()
