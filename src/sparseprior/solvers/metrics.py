"""Recovery metrics.

NMSE(dB) = 10 log10( sum ||x_hat - x*||^2 / sum ||x*||^2 ) over the whole set: one ratio of
sums, not a mean of per-sample dBs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def nmse_db(x_hat: torch.Tensor, x_true: torch.Tensor) -> float:
    """NMSE in dB of estimates ``x_hat`` (batch, n) against ``x_true`` (batch, n)."""
    if x_hat.shape != x_true.shape:
        raise ValueError(f"x_hat has shape {tuple(x_hat.shape)} but x_true has "
                         f"{tuple(x_true.shape)}; they must match")
    err = (x_hat.double() - x_true.double()).pow(2).sum().item()
    ref = x_true.double().pow(2).sum().item()
    if ref == 0.0:
        raise ValueError("x_true is all zeros; NMSE is undefined")
    return 10.0 * math.log10(max(err / ref, 1e-30))


def nmse_db_per_step(iterates: Sequence[torch.Tensor] | torch.Tensor,
                     x_true: torch.Tensor) -> list[float]:
    """NMSE(dB) per iterate/layer; ``iterates``: list of (batch, n) or a (T, batch, n) tensor."""
    return [nmse_db(x, x_true) for x in iterates]


def per_sample_nmse_db(x_hat: torch.Tensor, x_true: torch.Tensor) -> torch.Tensor:
    """NMSE(dB) of each sample (batch,); samples with x* = 0 give NaN.

    A robust companion to :func:`nmse_db`: the set-level ratio can be dominated by a few hard
    samples (e.g. unusually dense supports), the median of this is not.
    """
    if x_hat.shape != x_true.shape:
        raise ValueError(f"x_hat has shape {tuple(x_hat.shape)} but x_true has "
                         f"{tuple(x_true.shape)}; they must match")
    err = (x_hat.double() - x_true.double()).pow(2).sum(dim=-1)
    ref = x_true.double().pow(2).sum(dim=-1)
    ratio = torch.where(ref > 0, err / ref.clamp_min(1e-300), torch.nan)
    return 10.0 * torch.log10(ratio.clamp_min(1e-30))


def support_recovery(x_hat: torch.Tensor, x_true: torch.Tensor, tol: float = 1e-6
                     ) -> dict[str, float]:
    """False positives/negatives of the estimated support ``|x_hat| > tol`` vs ``x_true != 0``.

    Rates are per entry: FP rate = FP / #true zeros, FN rate = FN / #true non-zeros.
    """
    est = x_hat.abs() > tol
    true = x_true != 0
    fp = int((est & ~true).sum())
    fn = int((~est & true).sum())
    n_zero = int((~true).sum())
    n_nonzero = int(true.sum())
    return {
        "false_positives": fp,
        "false_negatives": fn,
        "fp_rate": fp / max(n_zero, 1),
        "fn_rate": fn / max(n_nonzero, 1),
        "exact_support_fraction": float(((est == true).all(dim=-1)).float().mean()),
    }


def nmse_db_split_by_support(x_hat: torch.Tensor, x_true: torch.Tensor, max_nonzeros: int
                             ) -> dict[str, float | int]:
    """Set-level NMSE(dB) of the samples with at most / more than ``max_nonzeros`` non-zeros
    in x* (e.g. the support-selection cap), and how many samples are dense.

    Returns ``{"typical_nmse_db", "dense_nmse_db", "n_dense"}`` (a NaN entry when a group is
    empty).
    """
    if x_hat.shape != x_true.shape:
        raise ValueError(f"x_hat has shape {tuple(x_hat.shape)} but x_true has "
                         f"{tuple(x_true.shape)}; they must match")
    dense = (x_true != 0).sum(dim=-1) > max_nonzeros
    out: dict[str, float | int] = {"n_dense": int(dense.sum())}
    for key, rows in (("typical_nmse_db", ~dense), ("dense_nmse_db", dense)):
        ok = bool(rows.any()) and bool(x_true[rows].abs().sum() > 0)
        out[key] = nmse_db(x_hat[rows], x_true[rows]) if ok else float("nan")
    return out
