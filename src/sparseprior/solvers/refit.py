"""Refits of a sparse estimate on a support: least squares (debias), the support oracle, and
an empirical-Bayes refit for noisy problems.

All take A (m, n), y (batch, m) and return (batch, n) in A's dtype, solved in float64 through
the k x k normal equations of each sample's support columns (k the support size).
"""

from __future__ import annotations

import math

import torch

from sparseprior.common.validation import as_float_tensor, check_range
from sparseprior.solvers.classic import check_system


def least_squares_on_support(A: torch.Tensor, y: torch.Tensor, support: torch.Tensor,
                             chunk: int = 128) -> torch.Tensor:
    """min ||A_S x_S - y||^2 per sample over its ``support`` (bool, (batch, n)): (batch, n).

    Solved in float64 through the k x k normal equations of the support's columns, k the
    largest support in a chunk of at most ``chunk`` samples (smaller supports padded with
    identity rows), so a chunk costs about k^2 m per sample, not n^3. A support with more
    columns than measurements (k > m) has no unique solution: it is refused.
    """
    A, y = check_system(A, y)
    return _solve_on_support(A, y, _checked_support(A, y, support), chunk)[0].to(A.dtype)


def support_oracle_ls(A: torch.Tensor, y: torch.Tensor, x_true: torch.Tensor,
                      chunk: int = 128) -> torch.Tensor:
    """Least squares restricted to the true support of each sample: (batch, n), the accuracy
    floor of any estimator on a noisy problem (:func:`least_squares_on_support`)."""
    return least_squares_on_support(A, y, _support_of(x_true, "x_true"), chunk)


def debias(A: torch.Tensor, y: torch.Tensor, x_hat: torch.Tensor,
           chunk: int = 128) -> torch.Tensor:
    """An estimate's shrinkage removed: least squares on the support ``x_hat`` found, (batch, n).

    The debiasing step of GPSR (Figueiredo, Nowak & Wright 2007) and the relaxed LASSO: the
    values the l1 penalty (or a learned threshold) pulled towards zero are refitted, the
    support is kept. Costs about k^2 m per sample (k the support size), a few layers' worth
    for k << m. Helps when the support is right and the noise moderate; it cannot add
    entries the estimate missed.
    """
    return least_squares_on_support(A, y, _support_of(x_hat, "x_hat"), chunk)


def bayes_refit(A: torch.Tensor, y: torch.Tensor, x_hat: torch.Tensor, *, p: float,
                snr_db: float, extra: float = 0.1, amplitude_var: float | None = None,
                chunk: int = 128) -> torch.Tensor:
    """Empirical-Bayes refit of an estimate of a noisy Bernoulli(p)-Gaussian x: (batch, n).

    1. Candidates: the support ``x_hat`` found, plus the ``ceil(extra * p * n)`` columns most
       correlated with the residual of the least-squares refit on it (entries a threshold
       missed near the noise level).
    2. Least squares on the candidates: z_S, with noise covariance sigma^2 (A_S^T A_S)^-1;
       sigma^2 per sample from ||y||^2 and ``snr_db`` (noise power relative to ||A x||^2 / m,
       as :class:`~sparseprior.solvers.problems.SparseRecoveryProblem` draws it).
    3. Each z_i shrunk to its posterior mean under x_i ~ (1 - p) delta_0 + p N(0, v), read as
       z_i ~ N(x_i, c_i) with c_i the i-th diagonal entry of that covariance:
       pi_i z_i v / (v + c_i), pi_i the posterior probability that x_i != 0.

    ``amplitude_var`` is v (default: estimated from the batch, mean ||A x||^2 / (p ||A||_F^2)).
    ``extra`` 0.1 was chosen on a validation set at SNR 20 dB (docs/solvers.md). Removes
    1.5-1.8 dB of the 4.9-5.5 dB that separate debiased, calibrated HyperLISTA from the
    support oracle at SNR 20 (250x500, p = 0.1). All-zero measurements give x = 0.
    """
    A, y = check_system(A, y)
    check_range(p, "p", 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of dB, got {snr_db}")
    check_range(extra, "extra", 0.0)
    noise_share = 10.0 ** (-snr_db / 10.0)                   # noise / signal power
    y64, A64 = y.double(), A.double()
    signal = y64.pow(2).sum(dim=1) / (1.0 + noise_share)      # ||A x||^2 per sample
    sigma2 = noise_share * signal / A.shape[0]
    if not bool((signal > 0).any()):
        return torch.zeros(y.shape[0], A.shape[1], dtype=A.dtype, device=A.device)
    if amplitude_var is None:
        amplitude_var = float(signal.mean() / (p * A64.pow(2).sum()))
    check_range(amplitude_var, "amplitude_var", 0.0, low_inclusive=False)
    support = _support_of(x_hat, "x_hat").to(A.device)
    if support.shape != (y.shape[0], A.shape[1]):
        raise ValueError(f"x_hat must have shape (batch, n) = ({y.shape[0]}, {A.shape[1]}), "
                         f"got {tuple(x_hat.shape)}")
    support = _widened(A64, y64, support, math.ceil(extra * p * A.shape[1]), chunk)
    z, inv_diag = _solve_on_support(A64, y64, _checked_support(A, y, support), chunk,
                                    with_variance=True)
    c = (sigma2.unsqueeze(1) * inv_diag).clamp_min(torch.finfo(torch.float64).tiny)
    v = amplitude_var
    log_odds = (math.log(p / (1.0 - p)) + 0.5 * torch.log(c / (v + c))
                + 0.5 * z.pow(2) * (1.0 / c - 1.0 / (v + c)))
    shrunk = torch.sigmoid(log_odds) * z * v / (v + c)
    return torch.where(support, shrunk, torch.zeros_like(shrunk)).to(A.dtype)


def _widened(A: torch.Tensor, y: torch.Tensor, support: torch.Tensor, k: int, chunk: int
             ) -> torch.Tensor:
    """``support`` plus, per sample, the ``k`` columns outside it most correlated with the
    residual of least squares on it (capped so no support exceeds m)."""
    if len(support):
        k = min(k, A.shape[0] - int(support.sum(dim=1).max()))
    if k <= 0 or not len(support):
        return support
    fit, _ = _solve_on_support(A, y, _checked_support(A, y, support), chunk)
    corr = ((y - fit @ A.T) @ A).abs().masked_fill(support, -1.0)
    return support.scatter(1, corr.topk(k, dim=1).indices, True)


def _checked_support(A: torch.Tensor, y: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(support) or support.dtype != torch.bool:
        raise ValueError("support must be a bool tensor (True where x may be non-zero)")
    if support.shape != (y.shape[0], A.shape[1]):
        raise ValueError(f"support must have shape (batch, n) = ({y.shape[0]}, {A.shape[1]}), "
                         f"got {tuple(support.shape)}")
    support = support.to(A.device)
    k_max = int(support.sum(dim=1).max()) if len(support) else 0
    if k_max > A.shape[0]:
        raise ValueError(f"a support of {k_max} entries exceeds the m = {A.shape[0]} "
                         "measurements: least squares on it is not unique")
    return support


def _solve_on_support(A: torch.Tensor, y: torch.Tensor, support: torch.Tensor, chunk: int,
                      with_variance: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Least squares per sample on a checked ``support``, float64 (batch, n); with
    ``with_variance`` also the diagonal of (A_S^T A_S)^-1 scattered to (batch, n)."""
    columns = A.T.double()                                    # (n, m)
    out = torch.zeros(y.shape[0], A.shape[1], dtype=torch.float64, device=A.device)
    inv_diag = torch.zeros_like(out) if with_variance else None
    for start in range(0, y.shape[0], chunk):
        rows = support[start:start + chunk]                   # (b, n)
        k = int(rows.sum(dim=1).max())
        if k == 0:
            continue
        # each row's support first (a permutation, so the k indices are distinct)
        idx = torch.argsort(rows.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
        kept = torch.gather(rows, 1, idx).double()            # (b, k): 0 marks padding
        cols = columns[idx] * kept.unsqueeze(2)               # (b, k, m)
        gram = cols @ cols.transpose(1, 2) + torch.diag_embed(1.0 - kept)
        rhs = cols @ y[start:start + chunk].double().unsqueeze(2)
        values = torch.linalg.solve(gram, rhs).squeeze(2) * kept
        out[start:start + chunk].scatter_(1, idx, values)
        if inv_diag is not None:
            diag = torch.linalg.inv(gram).diagonal(dim1=1, dim2=2) * kept
            inv_diag[start:start + chunk].scatter_(1, idx, diag)
    return out, inv_diag


def _support_of(x: torch.Tensor, name: str) -> torch.Tensor:
    return as_float_tensor(x, name, ndim=2, dtype=torch.float64) != 0
