"""Sparse recovery on a user's own A and y (``sparseprior.solvers.recover`` and ``sparseprior
solvers recover``): the estimate is accurate, the files round-trip, bad files are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparseprior.solvers.metrics import nmse_db
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.recover import (
    RecoveryConfig,
    build_recovery_solver,
    read_array,
    recover,
    write_array,
)
from sparseprior.solvers.unrolled import HyperLISTA, load_solver


@pytest.fixture(scope="module")
def problem():
    return SparseRecoveryProblem.generate(ProblemConfig(m=100, n=200, p=0.05, seed=3, n_val=64,
                                                        n_test=64))


def test_recover_with_the_shipped_hyperlista_is_accurate(problem):
    x, y = problem.test_set()
    result = recover(problem.A, y, config=RecoveryConfig(p=0.05))
    assert nmse_db(result.x, x) < -40
    assert result.x.shape == x.shape and result.residual.shape == (64,)
    assert float(result.residual.median()) < 0.01
    assert torch.equal(result.support, (result.x != 0).sum(dim=1))
    one = recover(problem.A, y[0], config=RecoveryConfig(p=0.05))     # one vector (m,)
    assert one.x.shape == (1, 200) and torch.allclose(one.x[0], result.x[0], atol=1e-6)


def test_recover_debias_and_a_given_solver(problem):
    noisy = SparseRecoveryProblem.generate(ProblemConfig(m=100, n=200, p=0.05, snr_db=20,
                                                         seed=4, n_val=64, n_test=64))
    x, y = noisy.test_set()
    solver = HyperLISTA(noisy.A, p=0.05, snr_db=20)
    plain = recover(noisy.A, y, solver)
    refit = recover(noisy.A, y, solver, RecoveryConfig(debias=True))
    assert refit.debiased and nmse_db(refit.x, x) < nmse_db(plain.x, x)
    with pytest.raises(ValueError, match="set only the refit"):
        recover(noisy.A, y, solver, RecoveryConfig(p=0.05))
    bayes = recover(noisy.A, y, solver, RecoveryConfig(p=0.05, snr_db=20, bayes_refit=True))
    assert bayes.bayes_refit and not bayes.debiased
    assert nmse_db(bayes.x, x) < nmse_db(refit.x, x)
    with pytest.raises(ValueError, match="needs the prior"):
        RecoveryConfig(p=0.05, bayes_refit=True)
    with pytest.raises(ValueError, match="choose one refit"):
        RecoveryConfig(p=0.05, snr_db=20, bayes_refit=True, debias=True)
    with pytest.raises(ValueError, match="set only the refit"):
        recover(noisy.A, y, solver, RecoveryConfig(p=0.05, snr_db=20, bayes_refit=True,
                                                   calibrate=True))
    with pytest.raises(ValueError, match=r"built for \(m, n\) = \(100, 200\)"):
        recover(noisy.A[:, :150], y, solver)
    with pytest.raises(ValueError, match="m = 100"):
        recover(noisy.A, y[:, :90])


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
def test_arrays_round_trip(tmp_path, suffix):
    a = torch.randn(3, 5)
    path = write_array(tmp_path / f"a{suffix}", a)
    assert torch.equal(read_array(path, "x"), a)


def test_read_array_refuses_bad_files(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy array file"):
        read_array(tmp_path / "obj.npy", "A")
    np.savez(tmp_path / "two.npz", A=np.ones((2, 2)), B=np.ones(2))
    assert read_array(tmp_path / "two.npz", "A").shape == (2, 2)
    with pytest.raises(ValueError, match=r"holds arrays \['A', 'B'\]: name one 'y'"):
        read_array(tmp_path / "two.npz", "y")
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="NaN/inf"):
        read_array(tmp_path / "nan.npy", "y")
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="must have 2 dimensions"):
        read_array(tmp_path / "cube.npy", "A", ndim=(2,))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        read_array(tmp_path / "junk.safetensors", "A")
    with pytest.raises(ValueError, match="unknown array format '.csv'"):
        read_array(tmp_path / "a.csv", "A")
    with pytest.raises(ValueError, match="does not exist"):
        read_array(tmp_path / "missing.npy", "A")


def test_cli_recover_writes_x_and_the_solver(cli, tmp_path, problem):
    x, y = problem.test_set()
    np.save(tmp_path / "A.npy", problem.A.numpy())
    np.savez(tmp_path / "y.npz", y=y.numpy())
    code, out, err = cli(["solvers", "recover", str(tmp_path / "A.npy"), str(tmp_path / "y.npz"),
                          str(tmp_path / "x.npy"), "--p", "0.05", "--save-solver",
                          str(tmp_path / "solver"), "--device", "cpu"])
    assert code == 0, err
    assert "64 x 200 recovered with HyperLISTA (16 layers)" in out
    assert nmse_db(torch.from_numpy(np.load(tmp_path / "x.npy")), x) < -40
    header = json.loads((tmp_path / "solver.json").read_text())
    assert header["config"]["name"] == "HyperLISTA"
    again = recover(problem.A, y, load_solver(tmp_path / "solver.safetensors", A=problem.A))
    assert torch.allclose(again.x, torch.from_numpy(np.load(tmp_path / "x.npy")))
    code, _, err = cli(["solvers", "recover", str(tmp_path / "A.npy"), str(tmp_path / "y.npz"),
                        str(tmp_path / "x2.npy"), "--checkpoint",
                        str(tmp_path / "solver.safetensors"), "--p", "0.1"])
    assert code == 2 and "set only the refit" in err
    np.save(tmp_path / "v.npy", np.ones(100))
    code, _, err = cli(["solvers", "recover", str(tmp_path / "v.npy"), str(tmp_path / "y.npz"),
                        str(tmp_path / "x3.npy")])
    assert code == 2 and "A must have 2 dimensions" in err
    assert not (tmp_path / "x3.npy").exists()


def test_calibrated_solver_is_tuned_for_the_users_A():
    small = SparseRecoveryProblem.generate(ProblemConfig(m=40, n=80, p=0.1, seed=5, n_val=8,
                                                         n_test=8))
    solver = build_recovery_solver(small.A, RecoveryConfig(p=0.1, calibrate=True, num_layers=8))
    assert solver.num_layers == 8 and solver.calibration["evaluations"] >= 2
    x, y = small.test_set()
    assert nmse_db(recover(small.A, y, solver).x, x) < -10


def test_momentum_rule_reaches_the_solver(cli, tmp_path, problem):
    x, y = problem.test_set()
    result = recover(problem.A, y, config=RecoveryConfig(p=0.05, momentum="marchenko-pastur"))
    assert result.solver.momentum == "marchenko-pastur" and nmse_db(result.x, x) < -40
    with pytest.raises(ValueError, match="momentum must be one of"):
        RecoveryConfig(momentum="adam")
    np.save(tmp_path / "A.npy", problem.A.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    code, _, err = cli(["solvers", "recover", str(tmp_path / "A.npy"), str(tmp_path / "y.npy"),
                        str(tmp_path / "x.npy"), "--p", "0.05", "--momentum",
                        "marchenko-pastur", "--save-solver", str(tmp_path / "solver")])
    assert code == 0, err
    header = json.loads((tmp_path / "solver.json").read_text())
    assert header["config"]["momentum"] == "marchenko-pastur"
