"""A new *tuned* learned solver defined here only (no library edit): one class, one fit
function, one registration; then fitted, benchmarked, saved, loaded and run from the CLI."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import torch
from torch import nn

from sparseprior.common.runs import RunDir
from sparseprior.solvers import (
    LEARNED_SOLVERS,
    FitConfig,
    ProblemConfig,
    SparseRecoveryProblem,
    UnrolledSolver,
    fit_solver,
    load_solver,
    nmse_db,
    register_solver,
)
from sparseprior.solvers.experiments import BenchConfig, run_benchmark
from sparseprior.solvers.fit import unregister_solver
from sparseprior.solvers.headline import HeadlineConfig

NAME = "StepISTA"


class StepISTA(UnrolledSolver):
    """ISTA with two shared hyperparameters: step c_step / L and threshold c_theta / L."""

    name = NAME

    def __init__(self, A: torch.Tensor, num_layers: int = 16, lam: float = 0.4, *,
                 c_step: float = 1.0, c_theta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(A, num_layers, lam, **kwargs)
        self.shared["c_step"] = nn.Parameter(torch.tensor(float(c_step)))
        self.shared["c_theta"] = nn.Parameter(torch.tensor(float(c_theta)))

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, **{k: float(v) for k, v in self.shared.items()}}

    def preactivation(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + (self.shared["c_step"] / self.L) * (self.residual(x, y) @ self.A)

    def threshold(self, t: int) -> torch.Tensor:
        return self.shared["c_theta"] / self.L


@torch.no_grad()
def grid_fit(model: StepISTA, problem: SparseRecoveryProblem, config: FitConfig,
             device: torch.device) -> dict[str, Any]:
    """Try every (c_step, c_theta) of a small grid on the validation set; keep the best."""
    x, y = problem.validation_set()
    x, y = x[:config.val_samples or None].to(device), y[:config.val_samples or None].to(device)
    scores = {}
    for c_step, c_theta in itertools.product((0.5, 1.0, 1.9), (0.003, 0.03, 0.3)):
        model.shared["c_step"].fill_(c_step)
        model.shared["c_theta"].fill_(c_theta)
        scores[(c_step, c_theta)] = nmse_db(model(y)[-1], x)
    (c_step, c_theta), best = min(scores.items(), key=lambda kv: kv[1])
    model.shared["c_step"].fill_(c_step)
    model.shared["c_theta"].fill_(c_theta)
    return {"source": "test grid", "val_nmse_db": best, "worst_val_nmse_db": max(
        scores.values()), "trials": len(scores)}


@pytest.fixture
def registered():
    register_solver(NAME, StepISTA, kind="tuned", fit=grid_fit)
    yield
    unregister_solver(NAME)


@pytest.fixture(scope="module")
def problem():
    return SparseRecoveryProblem.generate(ProblemConfig(m=20, n=40, seed=5, n_val=200,
                                                        n_test=200))


def test_registered_tuned_solver_fits_through_fit_solver(registered, problem):
    assert LEARNED_SOLVERS.get(NAME).kind == "tuned"
    fitted = fit_solver(NAME, problem, FitConfig(num_layers=8))
    assert fitted.kind == "tuned" and fitted.info["trials"] == 9
    assert fitted.info["n_params"] == 2            # two hyperparameters, nothing trained
    x, y = problem.validation_set()
    with torch.no_grad():
        assert nmse_db(fitted.model(y)[-1], x) == pytest.approx(fitted.info["val_nmse_db"],
                                                                abs=1e-4)
    assert fitted.info["val_nmse_db"] < fitted.info["worst_val_nmse_db"] - 1.0


def test_benchmark_checkpoint_and_headline_config_accept_it(registered, problem, tmp_path):
    config = BenchConfig(models=(NAME,), fit=FitConfig(num_layers=6), lams=(0.01,), iters=30)
    res = run_benchmark(RunDir(tmp_path), problem, config, progress=False)
    assert res.rows[0]["solver"] == NAME and res.rows[0]["kind"] == "tuned"
    model = load_solver(tmp_path / "checkpoints" / f"{NAME}.safetensors", A=problem.A)
    assert isinstance(model, StepISTA)
    assert model(problem.test_set()[1])[-1].shape == (200, 40)
    assert res.learned[NAME]["nmse_db"][-1] == pytest.approx(
        nmse_db(model(problem.test_set()[1])[-1].detach(), problem.test_set()[0]), abs=1e-4)
    assert HeadlineConfig(models=(NAME,)).models == (NAME,)


def test_cli_fits_it_and_forgets_it_after_unregistering(registered, cli, tmp_path):
    out = tmp_path / "run"
    code, text, err = cli(["solvers", "train", "--solver", NAME, "--num-layers", "4", "--m",
                           "10", "--n", "20", "--out", str(out), "--device", "cpu"])
    assert code == 0, err
    assert f"tuned {NAME} (4 layers)" in text
    assert json.loads((out / "model.json").read_text())["meta"]["source"] == "test grid"
    unregister_solver(NAME)
    code, _, err = cli(["solvers", "train", "--solver", NAME, "--m", "10", "--n", "20"])
    assert code == 2 and f"unknown learned solver '{NAME}'" in err
