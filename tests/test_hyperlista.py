"""HyperLISTA: exactly 3 hyperparameters, instance-adaptive, inference reads only y."""

import inspect
import math

import pytest
import torch

from sparseprior.solvers.analytic import analytic_weight
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import HyperLISTA, build_solver, load_solver, save_solver


@pytest.fixture(scope="module")
def problem() -> SparseRecoveryProblem:
    return SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, p=0.1, seed=3, n_val=128,
                                                       n_test=128))


def test_exactly_three_hyperparameters(problem):
    model = build_solver("HyperLISTA", problem.A, num_layers=16)
    assert model.n_params == 3
    assert sorted(n for n, _ in model.named_parameters()) == [
        "shared.c_beta", "shared.c_ss", "shared.c_theta"]
    assert set(model.hyperparameters) == {"c_beta", "c_theta", "c_ss"}
    assert sorted(model.state_dict()) == ["A", "shared.c_beta", "shared.c_ss", "shared.c_theta"]


def test_inference_reads_only_y(problem):
    model = build_solver("HyperLISTA", problem.A, num_layers=8)
    assert list(inspect.signature(model.forward).parameters) == ["y", "num_layers"]
    # Two different x* with the same measurements y (they differ by a null-space vector of A)
    # must give identical estimates.
    x1, y = problem.sample(4, 0)
    null = torch.linalg.svd(problem.A.double())[2][-1].float()          # A @ null ~ 0
    x2 = x1 + 3.0 * null
    torch.testing.assert_close(x2 @ problem.A.T, y, atol=1e-5, rtol=0)
    with torch.no_grad():
        out_a = model(y)
        out_b = model(y.clone())
    assert all(torch.equal(a, b) for a, b in zip(out_a, out_b, strict=True))
    assert not torch.allclose(x1, x2)


def reference(A, y, T, c_beta, c_theta, c_ss):
    """Straightforward per-sample loop of the HyperLISTA update."""
    W = analytic_weight(A).double()
    A = A.double()
    pinv = torch.linalg.pinv(A)
    n = A.shape[1]
    outs = []
    for b in range(y.shape[0]):
        yb = y[b].double()
        x = x_prev = torch.zeros(n, dtype=torch.float64)
        u0 = (pinv @ yb).abs().sum()
        traj = []
        for _ in range(T):
            r = yb - A @ x
            u = (pinv @ r).abs().sum()
            theta = c_theta * u
            p = min(max(c_ss * math.log(u0 / u), 0.0), 1.0)
            k = math.floor(p * n + 1e-6)
            beta = c_beta * int((x != 0).sum())
            z = x + W.T @ r
            mag = z.abs()
            keep = torch.zeros(n, dtype=torch.bool)
            if k > 0:
                cut = torch.sort(mag, descending=True).values[k - 1]
                keep = (mag >= cut) & (mag > theta)
            shrunk = torch.where(keep, z, torch.sign(z) * torch.clamp(mag - theta, min=0.0))
            x, x_prev = shrunk + beta * (x - x_prev), x
            traj.append(x)
        outs.append(torch.stack(traj))
    return torch.stack(outs, dim=1)          # (T, batch, n)


def test_matches_the_per_sample_reference(problem):
    _, y = problem.sample(6, 1)
    hp = {"c_beta": 0.01, "c_theta": 0.01, "c_ss": 0.8}
    model = HyperLISTA(problem.A, num_layers=6, **hp)
    with torch.no_grad():
        got = torch.stack(model(y)).double()
    torch.testing.assert_close(got, reference(problem.A, y, 6, **hp), atol=2e-4, rtol=1e-3)


def test_instance_adaptive_thresholds_give_scale_equivariance(problem):
    # theta_t scales with the residual, so scaling y scales every estimate.
    _, y = problem.sample(8, 2)
    model = build_solver("HyperLISTA", problem.A, num_layers=6)
    with torch.no_grad():
        a, b = model(y)[-1], model(10.0 * y)[-1]
    torch.testing.assert_close(b, 10.0 * a, atol=1e-4, rtol=1e-4)


def test_round_trip_and_bad_input(problem, tmp_path):
    model = HyperLISTA(problem.A, num_layers=4, c_beta=0.02, c_theta=0.003, c_ss=1.5)
    save_solver(model, tmp_path / "h")
    loaded = load_solver(tmp_path / "h.safetensors", A=problem.A)
    assert loaded.hyperparameters == pytest.approx(model.hyperparameters)
    with pytest.raises(ValueError, match="c_theta"):
        HyperLISTA(problem.A, c_theta=float("nan"))
    with pytest.raises(ValueError, match="gamma"):
        HyperLISTA(problem.A, gamma=0.0)
