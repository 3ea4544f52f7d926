from itertools import pairwise

import pytest
import torch

from sparseprior.solvers.classic import fista, ista, lasso_objective, soft_threshold
from sparseprior.solvers.metrics import nmse_db, support_recovery
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem


@pytest.fixture(scope="module")
def small():
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, p=0.1, seed=1, n_test=20))
    x, y = prob.test_set()
    return prob.A.double(), x.double(), y.double()


def _kkt_violation(A, y, x, lam):
    """Max violation of the LASSO optimality conditions (subgradient of the l1 term)."""
    g = (y - x @ A.T) @ A  # = -grad of the smooth part
    on = x != 0
    v_on = (g - lam * torch.sign(x))[on].abs().max()
    v_off = (g.abs() - lam).clamp_min(0)[~on].max()
    return max(float(v_on), float(v_off))


@pytest.mark.parametrize("solver", [ista, fista])
def test_reaches_lasso_solution(small, solver):
    A, x, y = small
    lam = 0.05
    res = solver(A, y, lam, max_iter=20000, tol=1e-12)
    assert _kkt_violation(A, y, res.x, lam) < 1e-6
    # and the violation is large early on: the test can fail
    early = solver(A, y, lam, max_iter=3)
    assert _kkt_violation(A, y, early.x, lam) > 1e-3


def test_fista_objective_decreases_faster(small):
    A, _, y = small
    lam = 0.05
    r_ista = ista(A, y, lam, max_iter=200, track_objective=True)
    r_fista = fista(A, y, lam, max_iter=200, track_objective=True)
    opt = fista(A, y, lam, max_iter=20000, tol=1e-13).x
    f_star = float(lasso_objective(A, y, opt, lam).mean())
    gap_i = [o - f_star for o in r_ista.objective]
    gap_f = [o - f_star for o in r_fista.objective]
    assert gap_f[49] < 0.1 * gap_i[49] and gap_f[199] < gap_i[199]
    # ISTA is monotone
    assert all(b <= a + 1e-10 for a, b in pairwise(r_ista.objective))


def test_traces_and_iterates(small):
    A, x, y = small
    res = ista(A, y, 0.01, max_iter=10, x_true=x, return_iterates=True)
    assert res.n_iter == 10 and len(res.iterates) == 10 and len(res.nmse_db) == 10
    assert res.nmse_db[-1] == pytest.approx(nmse_db(res.iterates[-1], x))
    assert torch.equal(res.iterates[-1], res.x)


def test_tolerance_stops_early(small):
    A, _, y = small
    res = fista(A, y, 0.1, max_iter=10000, tol=1e-6)
    assert 1 < res.n_iter < 10000


def test_soft_threshold_and_metrics():
    v = torch.tensor([[-2.0, -0.5, 0.0, 0.3, 1.5]])
    assert torch.equal(soft_threshold(v, 0.5), torch.tensor([[-1.5, 0.0, 0.0, 0.0, 1.0]]))
    est = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    true = torch.tensor([[1.0, 3.0, 0.0, 0.0]])
    s = support_recovery(est, true)
    assert s["false_positives"] == 1 and s["false_negatives"] == 1
    assert s["fp_rate"] == 0.5 and s["fn_rate"] == 0.5
    assert nmse_db(true, true) < -200
    assert nmse_db(torch.zeros_like(true), true) == pytest.approx(0.0)


def test_bad_inputs(small):
    A, _, y = small
    with pytest.raises(ValueError, match=r"y must have shape \(batch, m=30\)"):
        ista(A, y[:, :10], 0.1)
    bad = y.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        fista(A, bad, 0.1)
    with pytest.raises(ValueError, match="lam must be in"):
        ista(A, y, -1.0)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        ista(A, y, 0.1, max_iter=0)
    with pytest.raises(ValueError, match="must match"):
        nmse_db(y, y[:, :3])


def test_per_sample_nmse_is_robust_to_one_bad_sample():
    from sparseprior.solvers.metrics import per_sample_nmse_db

    x = torch.ones(5, 4)
    x_hat = x * 1.01
    x_hat[0] = 10.0  # one wildly wrong sample dominates the set-level ratio
    per = per_sample_nmse_db(x_hat, x)
    assert per.shape == (5,)
    assert float(per[1:].max()) == pytest.approx(-40.0, abs=1e-4)
    assert float(per.median()) == pytest.approx(-40.0, abs=1e-4)
    assert nmse_db(x_hat, x) > 10.0
    assert torch.isnan(per_sample_nmse_db(torch.zeros(1, 3), torch.zeros(1, 3))).all()


@pytest.mark.parametrize("solver", ["FISTA-cont", "FISTA-restart"])
def test_named_baselines_reach_lasso_solution(small, solver):
    from sparseprior.solvers.classic import CLASSIC_SOLVERS

    A, _, y = small
    lam = 0.01
    res = CLASSIC_SOLVERS.get(solver)(A, y, lam, max_iter=20000, tol=1e-12)
    assert _kkt_violation(A, y, res.x, lam) < 1e-6
    assert _kkt_violation(A, y, CLASSIC_SOLVERS.get(solver)(A, y, lam, max_iter=3).x,
                          lam) > 1e-3


def test_gram_and_factored_forward_steps_agree():
    from sparseprior.solvers.classic import _GradientStep, lipschitz_constant

    gen = torch.Generator().manual_seed(0)
    for m, n in ((40, 60), (20, 60)):          # n <= 2m: Gram form; n > 2m: factored form
        A = torch.randn(m, n, generator=gen, dtype=torch.float64)
        y = torch.randn(5, m, generator=gen, dtype=torch.float64)
        z = torch.randn(5, n, generator=gen, dtype=torch.float64)
        L = lipschitz_constant(A)
        step = _GradientStep(A, y, L)
        assert step.gram == (n <= 2 * m)
        torch.testing.assert_close(step(z), z - (z @ A.T - y) @ A / L)


def test_continuation_starts_per_sample_and_restart_helps(small):
    A, x, y = small
    lam = 1e-3
    # one iteration at lambda_0 = max|A^T y_b| of each sample keeps every sample at zero
    assert fista(A, y, lam, max_iter=1, continuation=0.9).x.abs().max() < 1e-12
    cont = fista(A, y, lam, max_iter=150, continuation=0.9, x_true=x).nmse_db[-1]
    plain = fista(A, y, lam, max_iter=150, x_true=x).nmse_db[-1]
    assert cont < plain - 3.0
    with pytest.raises(ValueError, match="continuation"):
        fista(A, y, lam, continuation=1.5)
    lam = 0.01
    opt = fista(A, y, lam, max_iter=20000, tol=1e-13).x
    f_star = float(lasso_objective(A, y, opt, lam).mean())
    gap = {r: float(lasso_objective(A, y, fista(A, y, lam, max_iter=300, restart=r).x,
                                    lam).mean()) - f_star for r in (False, True)}
    assert gap[True] < 1e-3 * gap[False]
