"""ALISTA: analytic W, 2 trained scalars per layer, staged training, time budget."""

import math

import pytest
import torch

from sparseprior.solvers.analytic import analytic_weight
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.training import BUDGETS, budget_for, train_staged
from sparseprior.solvers.unrolled import ALISTA, build_solver, load_solver, save_solver


@pytest.fixture(scope="module")
def problem() -> SparseRecoveryProblem:
    return SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, p=0.1, seed=3, n_val=128,
                                                       n_test=128))


def test_sixteen_layers_have_32_parameters(problem):
    model = build_solver("ALISTA", problem.A, num_layers=16)
    assert isinstance(model, ALISTA)
    assert model.n_params == 32
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 32
    assert all(set(layer) == {"gamma", "theta"} for layer in model.layers)
    torch.testing.assert_close(model.W, analytic_weight(problem.A))
    assert not model.W.requires_grad and "W" not in model.state_dict()


def test_layer_is_the_alista_update(problem):
    _, y = problem.sample(5, 0)
    model = build_solver("ALISTA", problem.A, num_layers=2, support_selection=False)
    with torch.no_grad():
        model.layers[0]["gamma"].fill_(0.7)
        model.layers[0]["theta"].fill_(0.05)
    x1 = model(y)[0]
    z = 0.7 * (y @ analytic_weight(problem.A))
    expected = torch.sign(z) * torch.clamp(z.abs() - 0.05, min=0.0)
    torch.testing.assert_close(x1, expected)


def test_checkpoint_recomputes_W_for_the_given_A(problem, tmp_path):
    model = build_solver("ALISTA", problem.A, num_layers=3)
    save_solver(model, tmp_path / "alista")
    loaded = load_solver(tmp_path / "alista.safetensors")
    torch.testing.assert_close(loaded.W, model.W)
    assert loaded.n_params == 6


def test_staged_training_improves(problem):
    model = build_solver("ALISTA", problem.A, num_layers=4)
    x, y = problem.validation_set()
    with torch.no_grad():
        before = float(((model(y)[-1] - x) ** 2).sum() / (x ** 2).sum())
    config = budget_for("ALISTA", "quick").replace(max_steps_per_stage=60,
                                                   max_steps_fine_tune=20)
    result = train_staged(model, problem, config, device="cpu")
    assert result.val_nmse_db[-1] < 10 * math.log10(before) - 2.0     # >= 2 dB better
    assert budget_for("ALISTA", "quick") is BUDGETS["scalar-quick"]
    assert budget_for("LISTA", "quick") is BUDGETS["quick"]
    with pytest.raises(ValueError, match="unknown training budget"):
        budget_for("LISTA", "huge")
    with pytest.raises(ValueError, match="max_seconds"):
        BUDGETS["quick"].replace(max_seconds=0.0)


def test_time_budget_stops_stages(problem):
    model = build_solver("LISTA-CPSS", problem.A, num_layers=3)
    config = BUDGETS["quick"].replace(max_steps_per_stage=100_000, max_steps_fine_tune=None,
                                      patience=100_000, max_seconds=1.5)
    result = train_staged(model, problem, config, device="cpu")
    assert {r.stopped for r in result.history} == {"time"}
    assert len(result.history) == 9 and result.total_wall_s < 1.5 + 3.0
