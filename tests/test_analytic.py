"""ALISTA's analytic weight W."""

import pytest
import torch

from sparseprior.solvers.analytic import (
    analytic_weight,
    clear_cache,
    coherence_report,
    generalized_coherence,
    mutual_coherence,
    off_diagonal_energy,
)
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem


@pytest.fixture(scope="module")
def A() -> torch.Tensor:
    return SparseRecoveryProblem.generate(ProblemConfig(m=40, n=80, seed=1)).A


@pytest.mark.parametrize("kappa", [None, 30.0])
def test_constraint_and_lower_coherence(kappa):
    A = SparseRecoveryProblem.generate(ProblemConfig(m=50, n=100, seed=2, kappa=kappa)).A
    W = analytic_weight(A, cache=False)
    assert W.shape == A.shape and W.dtype == torch.float32
    diag = (W.double() * A.double()).sum(dim=0)
    assert float((diag - 1.0).abs().max()) <= 1e-6
    report = coherence_report(A, W)
    assert report.constraint_error <= 1e-6
    assert report.generalized_coherence < report.mutual_coherence
    assert report.off_diagonal_W < report.off_diagonal_A


def test_closed_form_is_optimal_and_matches_pgd(A):
    W = analytic_weight(A, cache=False).double()
    W_pgd = analytic_weight(A, method="pgd", tol=1e-12, cache=False).double()
    assert float((W - W_pgd).abs().max()) < 1e-3
    base = off_diagonal_energy(W, A)
    # Any feasible perturbation (keeping w_i^T a_i = 1) cannot lower the objective.
    A64 = A.double()
    for seed in range(3):
        D = torch.randn(W.shape, generator=torch.Generator().manual_seed(100 + seed),
                        dtype=W.dtype)
        D = D - A64 * (D * A64).sum(0) / A64.pow(2).sum(0)      # keep the constraint
        assert off_diagonal_energy(W + 1e-2 * D, A64) > base
    assert generalized_coherence(W, A) < mutual_coherence(A)


def test_cached_per_matrix(A):
    clear_cache()
    W1 = analytic_weight(A)
    W2 = analytic_weight(A.clone())
    assert W1.data_ptr() == W2.data_ptr()          # same cached tensor
    W3 = analytic_weight(A * 2.0)
    assert W3.data_ptr() != W1.data_ptr()
    torch.testing.assert_close(W3 * 2.0, W1)        # w_i scales as 1/scale of a_i


def test_zero_column_is_rejected(A):
    bad = A.clone()
    bad[:, 5] = 0.0
    with pytest.raises(ValueError, match=r"all-zero column\(s\) \[5\]"):
        analytic_weight(bad)


def test_rank_deficient_parallel_columns_are_rejected():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(20, 5, generator=g)
    A = torch.cat([B, B @ torch.randn(5, 15, generator=g)], dim=1)   # rank 5, 20 columns
    A[:, 7] = -2.0 * A[:, 3]                                           # a parallel pair
    with pytest.raises(ValueError, match="parallel.*rank 5"):
        analytic_weight(A)


def test_bad_arguments(A):
    with pytest.raises(ValueError, match="method"):
        analytic_weight(A, method="svd")
    with pytest.raises(ValueError, match="2 dimension"):
        analytic_weight(A[0])
    with pytest.raises(ValueError, match="NaN"):
        analytic_weight(torch.full((3, 4), float("nan")))
