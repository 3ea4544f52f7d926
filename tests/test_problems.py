import math

import numpy as np
import pytest
import torch

from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem, l1_phase_transition


def test_default_statistics():
    prob = SparseRecoveryProblem.generate(ProblemConfig(seed=3))
    assert prob.A.shape == (250, 500)
    assert torch.allclose(prob.A.norm(dim=0), torch.ones(500), atol=1e-5)
    # entries ~ N(0, 1/m): after column normalisation the variance stays close to 1/m
    assert abs(prob.A.var().item() * 250 - 1.0) < 0.05
    x, y = prob.sample(4000, 0)
    rate = (x != 0).float().mean().item()
    assert abs(rate - 0.1) < 0.005
    nz = x[x != 0]
    assert abs(nz.std().item() - 1.0) < 0.03 and abs(nz.mean().item()) < 0.03
    assert torch.allclose(y, x @ prob.A.T)  # noiseless


@pytest.mark.parametrize("snr", [10.0, 30.0])
def test_snr_per_sample(snr):
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=100, n=200, snr_db=snr))
    gen = torch.Generator().manual_seed(1)
    x = prob.sample_x(2000, gen)
    clean = x @ prob.A.T
    noise = prob.measure(x, gen) - clean
    ok = clean.norm(dim=1) > 0
    measured = 10 * torch.log10(clean[ok].pow(2).sum() / noise[ok].pow(2).sum()).item()
    assert abs(measured - snr) < 0.2


@pytest.mark.parametrize("kappa", [5.0, 30.0])
def test_condition_number(kappa):
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=50, n=100, kappa=kappa))
    assert prob.condition_number == pytest.approx(kappa, rel=1e-3)
    assert torch.allclose(prob.A.norm(dim=0), torch.ones(100), atol=1e-5)


def test_fixed_sets_are_seeded_and_distinct():
    cfg = ProblemConfig(m=20, n=40, n_val=50, n_test=60, seed=7)
    a, b = SparseRecoveryProblem.generate(cfg), SparseRecoveryProblem.generate(cfg)
    assert torch.equal(a.A, b.A)
    assert torch.equal(a.test_set()[1], b.test_set()[1])
    assert a.test_set()[0].shape == (60, 40) and a.validation_set()[0].shape == (50, 40)
    assert not torch.equal(a.validation_set()[0][:50], a.test_set()[0][:50])
    c = SparseRecoveryProblem.generate(cfg.replace(seed=8))
    assert not torch.equal(a.A, c.A)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_load_round_trip(tmp_path, suffix):
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=20, n=40, snr_db=20.0, n_val=10))
    path = prob.save(tmp_path / f"p{suffix}")
    back = SparseRecoveryProblem.load(path)
    assert back.config == prob.config
    assert torch.equal(back.A, prob.A)
    assert torch.equal(back.test_set()[1], prob.test_set()[1])


def test_user_matrix_numpy_and_torch():
    A = np.random.default_rng(0).normal(size=(10, 30))
    prob = SparseRecoveryProblem.from_matrix(A, p=0.2)
    assert prob.m == 10 and prob.n == 30 and prob.A.dtype == torch.float32
    assert prob.lipschitz == pytest.approx(np.linalg.norm(A, 2) ** 2, rel=1e-5)
    SparseRecoveryProblem.from_matrix(torch.randn(10, 30))


@pytest.mark.parametrize("bad, match", [
    ({"p": 0.0}, r"p must be in \(0.0, 1.0\]"),
    ({"p": 1.5}, r"p must be in"),
    ({"m": -3}, "m must be >= 1"),
    ({"kappa": 0.5}, "kappa must be in"),
    ({"snr_db": math.inf}, "snr_db"),
])
def test_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        ProblemConfig(**bad)


def test_bad_matrices(tmp_path):
    A = torch.randn(5, 8)
    A[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        SparseRecoveryProblem.from_matrix(A)
    Z = torch.randn(5, 8)
    Z[:, 3] = 0
    with pytest.raises(ValueError, match="all-zero column"):
        SparseRecoveryProblem.from_matrix(Z)
    with pytest.raises(ValueError, match="2 dimension"):
        SparseRecoveryProblem.from_matrix(torch.randn(5))
    with pytest.raises(ValueError, match=".npz or .safetensors"):
        SparseRecoveryProblem.generate(ProblemConfig(m=4, n=8)).save(tmp_path / "p.txt")


def test_l1_phase_transition_curve():
    deltas = [0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    rho = [l1_phase_transition(d) for d in deltas]
    assert all(a < b for a, b in zip(rho, rho[1:], strict=False))   # more measurements, more k
    assert rho[-1] == pytest.approx(1.0, abs=1e-3)
    # Donoho-Tanner weak threshold (signed x*), e.g. Donoho, Maleki & Montanari 2009, Fig. 1.
    assert 0.38 < l1_phase_transition(0.5) < 0.39
    assert 0.18 < l1_phase_transition(0.1) < 0.20
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="delta"):
            l1_phase_transition(bad)
