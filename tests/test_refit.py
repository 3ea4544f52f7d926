"""Refits on a support (solvers.refit): least squares, the support oracle, the Bayes refit."""

import math

import pytest
import torch

from sparseprior.solvers.classic import fista
from sparseprior.solvers.metrics import nmse_db
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.refit import (
    bayes_refit,
    debias,
    least_squares_on_support,
    support_oracle_ls,
)


@pytest.fixture(scope="module")
def small():
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, p=0.1, seed=1, n_test=20))
    x, y = prob.test_set()
    return prob.A.double(), x.double(), y.double()


def test_support_oracle_is_exact_when_noiseless(small):
    A, x, y = small
    x_or = support_oracle_ls(A, y, x)
    assert nmse_db(x_or, x) < -100
    assert ((x_or != 0) <= (x != 0)).all()


def test_support_oracle_equals_least_squares_on_each_support():
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(40, 60, generator=gen) / 40 ** 0.5
    x = torch.randn(9, 60, generator=gen) * (torch.rand(9, 60, generator=gen) < 0.15)
    x[0] = 0.0                                    # empty support
    x[1, :15] = 1.0                               # the largest support sets the chunk's k
    y = x @ A.T + 0.05 * torch.randn(9, 40, generator=gen)
    got = support_oracle_ls(A, y, x, chunk=4)     # chunks of mixed support sizes
    for b in range(9):
        s = (x[b] != 0).nonzero().squeeze(1)
        want = torch.zeros(60, dtype=torch.float64)
        if len(s):
            want[s] = torch.linalg.lstsq(A[:, s].double(), y[b].double()).solution
        assert torch.allclose(got[b].double(), want, atol=1e-5), b
    assert bool((got[0] == 0).all())


def test_debias_removes_the_shrinkage_of_a_lasso_estimate():
    """FISTA's LASSO estimate on a noisy problem keeps its support but is shrunk towards zero;
    least squares on that support (debias) is closer to x* and equals the oracle when the
    support is right."""
    gen = torch.Generator().manual_seed(5)
    A = torch.randn(60, 120, generator=gen) / 60 ** 0.5
    x = torch.randn(16, 120, generator=gen) * (torch.rand(16, 120, generator=gen) < 0.08)
    y = x @ A.T + 0.01 * torch.randn(16, 60, generator=gen)
    lasso = fista(A, y, 0.05, max_iter=500).x
    refit = debias(A, y, lasso)
    assert ((refit != 0) <= (lasso != 0)).all()
    assert nmse_db(refit, x) < nmse_db(lasso, x) - 3
    same = ((lasso != 0) == (x != 0)).all(dim=1)
    assert same.any()
    assert torch.allclose(refit[same], support_oracle_ls(A, y, x)[same], atol=1e-5)


def test_least_squares_on_support_refuses_bad_supports():
    A, y = torch.randn(5, 8), torch.randn(2, 5)
    with pytest.raises(ValueError, match="bool"):
        least_squares_on_support(A, y, torch.ones(2, 8))
    with pytest.raises(ValueError, match="shape"):
        least_squares_on_support(A, y, torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="exceeds the m = 5"):
        least_squares_on_support(A, y, torch.ones(2, 8, dtype=torch.bool))


@pytest.fixture(scope="module")
def noisy():
    """A noisy problem (SNR 20 dB) and the debiased FISTA estimate of it (lambda near the
    noise level), as the Bayes refit receives it."""
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=100, n=200, p=0.1, snr_db=20.0,
                                                        seed=2, n_test=128))
    x, y = prob.test_set()
    A = prob.A
    lasso = fista(A, y, 0.05, max_iter=300).x
    return A, x, y, lasso


def test_bayes_refit_closes_part_of_the_gap_to_the_oracle(noisy):
    """On a Bernoulli-Gaussian problem at SNR 20 the refit (told p and the SNR) beats least
    squares on the found support and stays above the oracle floor; with extra = 0 it keeps
    the found support, with extra > 0 it may add entries."""
    A, x, y, lasso = noisy
    oracle = nmse_db(support_oracle_ls(A, y, x), x)
    plain = nmse_db(debias(A, y, lasso), x)
    kept = bayes_refit(A, y, lasso, p=0.1, snr_db=20.0, extra=0.0)
    widened = bayes_refit(A, y, lasso, p=0.1, snr_db=20.0)
    assert ((kept != 0) <= (lasso != 0)).all()
    assert bool(((widened != 0) & (lasso == 0)).any())
    assert nmse_db(kept, x) < plain - 0.3
    assert nmse_db(widened, x) < plain - 0.3
    assert oracle < nmse_db(widened, x)
    assert kept.dtype == A.dtype and kept.shape == x.shape


def test_bayes_refit_shrinks_noise_and_keeps_strong_entries():
    """Identity A, one sample: the entry far above the noise is kept with the Wiener factor
    v / (v + c), the one far below it is pulled to near zero (the posterior mean of the
    spike-and-slab prior); entries outside the support stay zero."""
    A = torch.eye(4, dtype=torch.float64)
    y = torch.tensor([[3.0, 0.05, 0.0, 0.0]], dtype=torch.float64)
    out = bayes_refit(A, y, y, p=0.1, snr_db=10.0, extra=0.0, amplitude_var=1.0)
    c = 0.1 * float(y.pow(2).sum()) / 1.1 / 4          # noise power per measurement
    assert math.isclose(float(out[0, 0]), 3.0 / (1.0 + c), rel_tol=1e-6)
    assert 0.0 <= float(out[0, 1]) < 0.05 * 0.05
    assert bool((out[0, 2:] == 0).all())


def test_bayes_refit_refuses_bad_input(noisy):
    A, x, y, lasso = noisy
    zero = bayes_refit(A, torch.zeros_like(y), lasso, p=0.1, snr_db=20.0)
    assert bool((zero == 0).all()) and zero.shape == lasso.shape
    with pytest.raises(ValueError, match="p"):
        bayes_refit(A, y, lasso, p=0.0, snr_db=20.0)
    with pytest.raises(ValueError, match="snr_db"):
        bayes_refit(A, y, lasso, p=0.1, snr_db=float("inf"))
    with pytest.raises(ValueError, match="x_hat must have shape"):
        bayes_refit(A, y, lasso[:, :10], p=0.1, snr_db=20.0)
    with pytest.raises(ValueError, match="extra"):
        bayes_refit(A, y, lasso, p=0.1, snr_db=20.0, extra=-1.0)
