"""Bayes-optimal AMP: the denoiser against numerical integration, convergence, bad input."""

import math

import pytest
import torch

from sparseprior.solvers.amp import bayes_amp, bernoulli_gaussian_posterior
from sparseprior.solvers.classic import fista
from sparseprior.solvers.metrics import nmse_db
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem


@pytest.mark.parametrize(("p", "x_var", "tau2"), [(0.1, 1.0, 0.05), (0.3, 2.0, 0.5)])
def test_posterior_matches_numerical_integration(p, x_var, tau2):
    r = torch.tensor([[-2.0, -0.3, 0.0, 0.1, 0.7, 3.0]], dtype=torch.float64)
    mean, var = bernoulli_gaussian_posterior(r, torch.tensor([[tau2]], dtype=torch.float64),
                                             p, x_var)
    g = torch.linspace(-12.0, 12.0, 40_001, dtype=torch.float64).unsqueeze(1)   # x grid
    dx = float(g[1] - g[0])
    like = torch.exp(-(r - g).square() / (2 * tau2))               # (grid, 6)
    dens = p * torch.exp(-g.square() / (2 * x_var)) / math.sqrt(2 * math.pi * x_var)
    spike = (1 - p) * torch.exp(-r[0].square() / (2 * tau2))       # the atom at x = 0
    z = (dens * like).sum(0) * dx + spike
    m1 = (g * dens * like).sum(0) * dx / z
    m2 = (g.square() * dens * like).sum(0) * dx / z
    torch.testing.assert_close(mean[0], m1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(var[0], m2 - m1.square(), atol=1e-6, rtol=1e-5)


def test_noiseless_recovery_converges_linearly():
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=100, n=200, p=0.1, seed=3, n_val=1,
                                                        n_test=64))
    x, y = prob.test_set()
    res = bayes_amp(prob.A, y, 0.1, max_iter=30, x_true=x)
    assert res.x.shape == x.shape and res.x.dtype == prob.A.dtype
    assert res.nmse_db[9] < -30.0 and res.nmse_db[-1] < -100.0
    assert res.nmse_db[-1] == pytest.approx(nmse_db(res.x.double(), x.double()), abs=0.5)


def test_prior_aware_amp_beats_tuned_fista_on_a_noisy_problem():
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=100, n=200, p=0.1, snr_db=20.0,
                                                        seed=2, n_val=1, n_test=128))
    x, y = prob.test_set()
    amp = nmse_db(bayes_amp(prob.A, y, 0.1, snr_db=20.0, max_iter=30).x, x)
    best_fista = min(nmse_db(fista(prob.A, y, lam, max_iter=500).x, x)
                     for lam in (0.003, 0.01, 0.03, 0.1))
    assert amp < best_fista - 1.0, (amp, best_fista)


def test_bad_input_is_refused():
    A = SparseRecoveryProblem.generate(ProblemConfig(m=10, n=20, seed=1)).A
    y = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="shape"):
        bayes_amp(A, torch.zeros(2, 11), 0.1)
    with pytest.raises(ValueError, match="p"):
        bayes_amp(A, y, 1.0)
    with pytest.raises(ValueError, match="not both"):
        bayes_amp(A, y, 0.1, snr_db=20.0, noise_std=0.1)
    with pytest.raises(ValueError, match="damping"):
        bayes_amp(A, y, 0.1, damping=1.0)
    with pytest.raises(ValueError):
        bayes_amp(A, torch.full((2, 10), float("nan")), 0.1)
