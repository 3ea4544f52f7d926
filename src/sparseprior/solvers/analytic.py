"""ALISTA's analytic weight matrix W (Liu, Chen, Wang & Yin, ICLR 2019).

Given A (m, n) with non-zero columns a_i, find W (m, n) that solves

    minimise  sum_{i != j} (w_i^T a_j)^2     subject to  w_i^T a_i = 1  for every i.

Because the diagonal is fixed, the objective equals ||W^T A||_F^2 - n and the problem splits
into one problem per column: min ||A^T w||^2 s.t. a_i^T w = 1. Its closed-form solution is

    w_i = G^+ a_i / (a_i^T G^+ a_i),   G = A A^T  (m, m),

(unique up to the null space of A^T, where we take the minimum-norm one). ``analytic_weight``
computes it in float64 (method ``"closed_form"``) or by projected gradient descent from W = A
(method ``"pgd"``: a gradient step on ||W^T A||_F^2, then the exact projection of each column
onto {w : a_i^T w = 1}), until the relative change of the objective falls below ``tol``.

Quality measures:

* mutual coherence of A: mu(A) = max_{i != j} |a_i^T a_j| / (||a_i|| ||a_j||);
* generalised coherence of (W, A): mu_g = max_{i != j} |w_i^T a_j| with w_i^T a_i = 1.

ALISTA's theory needs mu_g < 1. When two columns of A are parallel, a_j = c a_i (a
rank-deficiency no W can undo), every feasible W has w_i^T a_j = c and w_j^T a_i = 1/c, so
mu_g >= 1: ``analytic_weight`` then raises ``ValueError`` (``check=True``).

Results are cached per A (keyed by a hash of its bytes, the method and tolerance), so building
many ALISTA/HyperLISTA solvers for one problem computes W once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import OrderedDict

import torch

from sparseprior.common.validation import as_float_tensor, check_choice, check_positive_int

log = logging.getLogger(__name__)

__all__ = [
    "AnalyticWeight",
    "analytic_weight",
    "clear_cache",
    "coherence_report",
    "generalized_coherence",
    "mutual_coherence",
    "off_diagonal_energy",
]

METHODS = ("closed_form", "pgd")
_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_CACHE_SIZE = 16


@dataclasses.dataclass
class AnalyticWeight:
    """Diagnostics of an analytic W: constraint error max_i |w_i^T a_i - 1|, mutual coherence of
    A, generalised coherence of (W, A), the off-diagonal energies sum_{i!=j} (.)^2 of A (columns
    normalised) and of W, and the rank of A."""

    constraint_error: float
    mutual_coherence: float
    generalized_coherence: float
    off_diagonal_A: float
    off_diagonal_W: float
    rank: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _check_A(A: torch.Tensor) -> torch.Tensor:
    A = as_float_tensor(A, "A", ndim=2, dtype=torch.float64)
    if A.numel() == 0:
        raise ValueError(f"A must be a non-empty (m, n) matrix, got shape {tuple(A.shape)}")
    norms = A.norm(dim=0)
    if bool((norms == 0).any()):
        cols = torch.nonzero(norms == 0).flatten()[:10].tolist()
        raise ValueError(f"A has all-zero column(s) {cols}: no W can satisfy w_i^T a_i = 1 "
                         f"for a zero column; remove those columns")
    return A


def _rank(A: torch.Tensor, rtol: float = 1e-6) -> int:
    """Numerical rank of A: singular values above ``rtol`` times the largest."""
    return int(torch.linalg.matrix_rank(A, rtol=rtol))


def _gram_off_diagonal(M: torch.Tensor) -> torch.Tensor:
    """M (n, n) with its diagonal set to 0."""
    return M - torch.diag_embed(torch.diagonal(M))


def mutual_coherence(A: torch.Tensor) -> float:
    """max_{i != j} |a_i^T a_j| / (||a_i|| ||a_j||) of A (m, n)."""
    A = _check_A(A)
    An = A / A.norm(dim=0, keepdim=True)
    return float(_gram_off_diagonal(An.T @ An).abs().max())


def generalized_coherence(W: torch.Tensor, A: torch.Tensor) -> float:
    """max_{i != j} |w_i^T a_j| of W, A (m, n) (meaningful when w_i^T a_i = 1)."""
    W, A = W.double(), A.double()
    return float(_gram_off_diagonal(W.T @ A).abs().max())


def off_diagonal_energy(W: torch.Tensor, A: torch.Tensor) -> float:
    """sum_{i != j} (w_i^T a_j)^2: the ALISTA objective."""
    return float(_gram_off_diagonal(W.double().T @ A.double()).pow(2).sum())


def _closed_form(A: torch.Tensor, rcond: float) -> torch.Tensor:
    G = A @ A.T
    evals, evecs = torch.linalg.eigh(G)
    keep = evals > rcond * evals.max()
    inv = torch.where(keep, 1.0 / evals.clamp_min(1e-300), torch.zeros_like(evals))
    GA = evecs @ (inv.unsqueeze(1) * (evecs.T @ A))            # G^+ A  (m, n)
    scale = (A * GA).sum(dim=0)                                  # a_i^T G^+ a_i  (n,)
    bad = scale <= 1e-12 * A.pow(2).sum(dim=0) / evals.max()
    if bool(bad.any()):
        cols = torch.nonzero(bad).flatten()[:10].tolist()
        raise ValueError(f"A is numerically rank-deficient: column(s) {cols} lie in the part "
                         f"of the range discarded at rcond={rcond:g}, so w_i^T a_i = 1 cannot "
                         f"be satisfied; lower rcond or remove those columns")
    return GA / scale


def _project(W: torch.Tensor, A: torch.Tensor, col_sq: torch.Tensor) -> torch.Tensor:
    """Exact projection of each column w_i onto the hyperplane a_i^T w = 1."""
    return W + A * ((1.0 - (W * A).sum(dim=0)) / col_sq)


def _pgd(A: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    col_sq = A.pow(2).sum(dim=0)
    G = A @ A.T
    step = 1.0 / (2.0 * float(torch.linalg.matrix_norm(G, ord=2)))
    W = _project(A.clone(), A, col_sq)
    previous = off_diagonal_energy(W, A)
    for it in range(1, max_iter + 1):
        W = _project(W - step * 2.0 * (G @ W), A, col_sq)
        if it % 10 == 0:
            value = off_diagonal_energy(W, A)
            if abs(previous - value) <= tol * max(abs(value), 1e-30):
                log.debug("analytic_weight pgd converged after %d iterations", it)
                return W
            previous = value
    log.warning("analytic_weight: projected gradient descent stopped at max_iter=%d before "
                "reaching tol=%g; use method='closed_form' for ill-conditioned A", max_iter, tol)
    return W


def _key(A: torch.Tensor, method: str, tol: float, rcond: float) -> tuple:
    digest = hashlib.sha1(A.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return (digest, tuple(A.shape), str(A.dtype), method, tol, rcond)


def clear_cache() -> None:
    """Forget the cached W matrices."""
    _CACHE.clear()


def analytic_weight(A: torch.Tensor, *, method: str = "closed_form", tol: float = 1e-10,
                    max_iter: int = 20_000, rcond: float = 1e-10, check: bool = True,
                    cache: bool = True) -> torch.Tensor:
    """ALISTA's analytic W (m, n) for A (m, n), as float32 on A's device.

    Args:
        A: sensing matrix (m, n), every column non-zero (``ValueError`` otherwise).
        method: ``"closed_form"`` (exact, any A) or ``"pgd"`` (projected gradient descent
            from W = A; slow for ill-conditioned A).
        tol: pgd stops when the objective's relative change over 10 steps is below tol.
        max_iter: pgd iteration cap.
        rcond: eigenvalues of A A^T below ``rcond * max`` count as zero (closed form).
        check: verify max_i |w_i^T a_i - 1| <= 1e-6 and generalised coherence < 1; raise
            ``ValueError`` otherwise (e.g. parallel columns in a rank-deficient A).
        cache: reuse a W computed before for the same A, method and tolerances.
    """
    check_choice(method, "method", METHODS)
    check_positive_int(max_iter, "max_iter")
    if not (tol > 0 and rcond > 0):
        raise ValueError(f"tol and rcond must be > 0, got tol={tol!r}, rcond={rcond!r}")
    device = A.device if isinstance(A, torch.Tensor) else torch.device("cpu")
    A64 = _check_A(A.detach().cpu() if isinstance(A, torch.Tensor) else A)
    key = _key(A64, method, tol, rcond)
    if cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key].to(device)
    W = _W_SOLVERS[method](A64, tol=tol, max_iter=max_iter, rcond=rcond)
    if check:
        _validate(W, A64)
    W32 = W.float()
    if cache:
        _CACHE[key] = W32
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return W32.to(device)


def _validate(W: torch.Tensor, A: torch.Tensor) -> None:
    err = float(((W * A).sum(dim=0) - 1.0).abs().max())
    if err > 1e-6:
        raise ValueError(f"the analytic W violates w_i^T a_i = 1 by {err:.3g} (> 1e-6): A is "
                         f"too ill-conditioned or rank-deficient (rank "
                         f"{_rank(A)} of {min(A.shape)})")
    M = _gram_off_diagonal(W.T @ A).abs()
    mu = float(M.max())
    if mu >= 1.0 - 1e-6:
        i, j = divmod(int(M.argmax()), M.shape[1])
        raise ValueError(f"no W can satisfy w_i^T a_i = 1 while keeping |w_i^T a_j| < 1: "
                         f"columns {i} and {j} of A are parallel (A has rank "
                         f"{_rank(A)} of {min(A.shape)}), generalised "
                         f"coherence {mu:.3g} >= 1; remove duplicate/parallel columns")


def coherence_report(A: torch.Tensor, W: torch.Tensor | None = None) -> AnalyticWeight:
    """Diagnostics of W (default: :func:`analytic_weight` of A) against A."""
    A64 = _check_A(A.detach().cpu() if isinstance(A, torch.Tensor) else A)
    W64 = (analytic_weight(A64) if W is None else W).detach().cpu().double()
    An = A64 / A64.norm(dim=0, keepdim=True)
    return AnalyticWeight(
        constraint_error=float(((W64 * A64).sum(dim=0) - 1.0).abs().max()),
        mutual_coherence=mutual_coherence(A64),
        generalized_coherence=generalized_coherence(W64, A64),
        off_diagonal_A=off_diagonal_energy(An, An),
        off_diagonal_W=off_diagonal_energy(W64, A64),
        rank=_rank(A64),
    )


#: How W is computed: ``method`` -> ``fn(A64, tol=, max_iter=, rcond=)``.
_W_SOLVERS = {
    "closed_form": lambda A, *, tol, max_iter, rcond: _closed_form(A, rcond),
    "pgd": lambda A, *, tol, max_iter, rcond: _pgd(A, tol, max_iter),
}
