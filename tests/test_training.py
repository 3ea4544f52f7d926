import json

import pytest
import torch

from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.training import (
    BUDGETS,
    StagedTrainingConfig,
    evaluate_layers,
    stage_param_groups,
    train_stage,
    train_staged,
    trained_layers,
    warm_start_layer,
)
from sparseprior.solvers.unrolled import build_solver, load_solver

TINY = StagedTrainingConfig(batch_size=16, patience=10, eval_every=2, max_steps_per_stage=8,
                            max_steps_fine_tune=4, seed=5)


@pytest.fixture(scope="module")
def problem() -> SparseRecoveryProblem:
    return SparseRecoveryProblem.generate(ProblemConfig(m=20, n=40, p=0.1, seed=1, n_val=100,
                                                       n_test=100))


def test_a_stage_improves_validation_nmse(problem):
    model = build_solver("LISTA-CPSS", problem.A, num_layers=2)
    x_val, y_val = problem.validation_set()
    before = evaluate_layers(model, x_val, y_val)
    layer2 = [p.detach().clone() for p in model.layer_parameters(2)]
    config = TINY.replace(init_lr=5e-3, max_steps_per_stage=60, eval_every=5)
    record = train_stage(model, problem, 1, 0, config, torch.Generator().manual_seed(0),
                         (x_val, y_val))
    after = evaluate_layers(model, x_val, y_val)
    assert record.steps == 60 and record.stage_name == "A"
    assert after[0] < before[0] - 1.0
    assert after[0] == pytest.approx(record.best_val_nmse_db)
    for old, new in zip(layer2, model.layer_parameters(2), strict=True):
        assert torch.equal(old, new)  # stage A of layer 1 leaves layer 2 alone
    assert record.curve[0] == (0, pytest.approx(before[0]))


def test_stage_restores_best_parameters(problem):
    model = build_solver("LISTA-CP", problem.A, num_layers=1)
    x_val, y_val = problem.validation_set()
    start = evaluate_layers(model, x_val, y_val)[0]
    # An absurd learning rate makes every step worse: the stage must end at the start point.
    config = TINY.replace(init_lr=10.0, max_steps_per_stage=6)
    record = train_stage(model, problem, 1, 0, config, torch.Generator().manual_seed(0),
                         (x_val, y_val))
    assert record.best_step == 0 and record.best_val_nmse_db == start
    assert evaluate_layers(model, x_val, y_val)[0] == start


def test_patience_stops_a_stage(problem):
    model = build_solver("LISTA-CP", problem.A, num_layers=1)
    val = problem.validation_set()
    config = TINY.replace(init_lr=10.0, patience=4, eval_every=2, max_steps_per_stage=100)
    record = train_stage(model, problem, 1, 0, config, torch.Generator().manual_seed(0), val)
    assert record.stopped == "patience" and record.steps == 4


def test_param_groups_follow_the_schedule(problem):
    model = build_solver("TiLISTA", problem.A, num_layers=4)
    config = StagedTrainingConfig(init_lr=5e-4, fine_tune_lrs=(1e-4, 1e-5), layer_decay=0.3)
    (only,) = stage_param_groups(model, 3, 0, config)
    assert only["lr"] == 5e-4 and only["params"] == model.layer_parameters(3)
    for stage, base in ((1, 1e-4), (2, 1e-5)):
        groups = stage_param_groups(model, 3, stage, config)
        assert [g["layer"] for g in groups] == [1, 2, 3]
        assert [g["lr"] for g in groups] == pytest.approx([base * 0.09, base * 0.3, base])
        assert groups[0]["params"][0] is model.shared["W"]  # tied W decays as layer 1
    optimizer = torch.optim.Adam(stage_param_groups(model, 2, 1, config))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([3e-5, 1e-4])


def test_full_run_structure_and_files(problem, tmp_path):
    model = build_solver("LISTA-CPSS", problem.A, num_layers=3)
    seen = []
    result = train_staged(model, problem, TINY, run_dir=tmp_path / "run", device="cpu",
                          progress=False, callback=seen.append)
    assert [(r.layer, r.stage_name) for r in result.history] == [
        (t, s) for t in (1, 2, 3) for s in "ABC"]
    assert seen == result.history
    assert [r.lr for r in result.history[:3]] == [5e-4, 1e-4, 1e-5]
    assert len(result.val_nmse_db) == 3 and result.val_nmse_db[-1] < 0
    assert all(r.steps == (8 if r.stage == 0 else 4) for r in result.history)
    run = tmp_path / "run"
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text()
              .splitlines()]
    assert events == ["stage"] * 9 + ["final"]
    assert json.loads((run / "config.json").read_text())["training"]["batch_size"] == 16
    assert len(list((run / "checkpoints").glob("*.safetensors"))) == 1
    loaded = load_solver(run / "model", A=problem.A)
    _, y = problem.test_set()
    with torch.no_grad():
        assert torch.equal(loaded(y)[-1], model(y)[-1])


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_parameters(problem, tmp_path):
    def fresh():
        return build_solver("LISTA-CPSS", problem.A, num_layers=3)

    config = TINY.replace(warm_start=True, max_steps_fine_tune=(4, 2))
    reference = fresh()
    train_staged(reference, problem, config, device="cpu", progress=False)

    def stop_after_four(record):
        if record.layer == 2 and record.stage == 0:
            raise Interrupt

    interrupted = fresh()
    with pytest.raises(Interrupt):
        train_staged(interrupted, problem, config, run_dir=tmp_path, device="cpu",
                     progress=False, callback=stop_after_four)
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert state["completed_stages"] == 4
    resumed = fresh()
    result = train_staged(resumed, problem, config, run_dir=tmp_path, device="cpu",
                          progress=False)
    assert result.resumed_stages == 4 and len(result.history) == 9
    assert [r.steps for r in result.history[:3]] == [8, 4, 2]
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text()
               .splitlines()]
    assert [m["event"] for m in metrics] == ["stage"] * 9 + ["final"]
    # A finished run resumes to itself without training; a different config is refused.
    again = train_staged(fresh(), problem, config, run_dir=tmp_path, progress=False)
    assert again.resumed_stages == 9 and again.val_nmse_db == result.val_nmse_db
    with pytest.raises(ValueError, match=r"different staged training run.*training\.seed"):
        train_staged(fresh(), problem, config.replace(seed=6), run_dir=tmp_path, progress=False)


def test_presets_and_bad_configs(problem):
    assert set(BUDGETS) == {"quick", "paper", "cpu", "gpu", "scalar-quick", "scalar-cpu",
                            "scalar-gpu"}
    assert BUDGETS["paper"].patience == 4000 and BUDGETS["paper"].eval_every == 10
    assert BUDGETS["paper"].init_lr == 5e-4 and BUDGETS["paper"].fine_tune_lrs == (1e-4, 1e-5)
    round_trip = StagedTrainingConfig.from_dict(json.loads(BUDGETS["cpu"].to_json()))
    assert round_trip == BUDGETS["cpu"]
    for bad in ({"patience": -1}, {"init_lr": 0.0}, {"fine_tune_lrs": (1e-4, -1.0)},
                {"layer_decay": 0.0}, {"eval_every": 0}, {"batch_size": 0},
                {"max_steps_per_stage": 0}, {"init_lr": float("nan")}, {"fine_tune_lrs": 1e-4},
                {"max_steps_fine_tune": (10,)}, {"max_steps_fine_tune": (10, 0)}):
        with pytest.raises(ValueError):
            StagedTrainingConfig(**bad)
    model = build_solver("LISTA-CP", problem.A, num_layers=1)
    with pytest.raises(ValueError, match="unknown training budget"):
        train_staged(model, problem, "fast")
    other = SparseRecoveryProblem.generate(ProblemConfig(m=10, n=40))
    with pytest.raises(ValueError, match=r"\(20, 40\).*\(10, 40\)"):
        train_staged(model, other, TINY)


def test_warm_start_copies_matching_parameters(problem):
    model = build_solver("LISTA", problem.A, num_layers=3)
    with torch.no_grad():
        for p in model.layer_parameters(1):
            p.mul_(2.0)
    assert warm_start_layer(model, 2) == ["W1", "theta"]  # layer 1 has no W2
    assert torch.equal(model.layers[1]["W1"], model.layers[0]["W1"])
    assert model.layers[1]["theta"] == model.layers[0]["theta"]
    assert not torch.equal(model.layers[2]["W1"], model.layers[1]["W1"])
    with pytest.raises(ValueError, match="warm-start"):
        warm_start_layer(model, 1)
    config = StagedTrainingConfig(max_steps_per_stage=7, max_steps_fine_tune=(5, 3))
    assert [config.max_steps(s) for s in range(3)] == [7, 5, 3]


def test_result_reports_steps_and_last_thresholds(problem):
    model = build_solver("ALISTA", problem.A, num_layers=2)
    result = train_staged(model, problem, TINY, device="cpu", progress=False)
    assert result.total_steps == sum(r.steps for r in result.history) > 0
    assert result.thresholds == [float(layer["theta"]) for layer in model.layers]
    assert result.to_dict()["total_steps"] == result.total_steps


def _assert_stage_trained(record, before, after, layer):
    """The stage's validation NMSE at ``layer`` is the whole model's, and it improved."""
    assert record.start_val_nmse_db == pytest.approx(before[layer - 1], abs=1e-4)
    assert record.best_val_nmse_db == pytest.approx(after[layer - 1], abs=1e-4)
    assert after[layer - 1] < before[layer - 1] - 0.5


def test_prefix_pool_trains_the_new_layer_on_cached_inputs(problem):
    model = build_solver("ALISTA", problem.A, num_layers=3)
    x_val, y_val = problem.validation_set()
    before = evaluate_layers(model, x_val, y_val)
    frozen = [p.detach().clone() for t in (1, 2) for p in model.layer_parameters(t)]
    config = TINY.replace(init_lr=1e-2, max_steps_per_stage=40, eval_every=5, prefix_pool=64)
    record = train_stage(model, problem, 3, 0, config, torch.Generator().manual_seed(0),
                         (x_val, y_val))
    after = evaluate_layers(model, x_val, y_val)
    # The cached prefix gives the same validation NMSE as the full forward pass.
    _assert_stage_trained(record, before, after, 3)
    assert after[:2] == before[:2]
    for old, new in zip(frozen, [p for t in (1, 2) for p in model.layer_parameters(t)],
                        strict=True):
        assert torch.equal(old, new)


@pytest.mark.parametrize("pool", [None, 64])
def test_fine_tune_window_trains_only_the_last_layers(problem, pool):
    model = build_solver("ALISTA", problem.A, num_layers=4)
    x_val, y_val = problem.validation_set()
    before = evaluate_layers(model, x_val, y_val)
    params = {t: [p.detach().clone() for p in model.layer_parameters(t)] for t in (1, 2, 3, 4)}
    config = TINY.replace(fine_tune_lrs=(1e-2,), max_steps_fine_tune=30, eval_every=5,
                          fine_tune_window=2, prefix_pool=pool)
    assert [g["layer"] for g in stage_param_groups(model, 4, 1, config)] == [3, 4]
    assert [g["layer"] for g in stage_param_groups(model, 1, 1, config)] == [1]
    assert config.caches_prefix(1) is (pool is not None)
    record = train_stage(model, problem, 4, 1, config, torch.Generator().manual_seed(0),
                         (x_val, y_val))
    after = evaluate_layers(model, x_val, y_val)
    # The pool (or full forward pass) gives the validation NMSE of the whole model.
    _assert_stage_trained(record, before, after, 4)
    assert after[:2] == before[:2]                      # layers 1, 2: outside the window
    for t in (1, 2):
        assert all(torch.equal(o, n) for o, n in zip(params[t], model.layer_parameters(t),
                                                     strict=True))
    assert any(not torch.equal(o, n) for o, n in zip(params[3], model.layer_parameters(3),
                                                     strict=True))
    with pytest.raises(ValueError, match="fine_tune_window"):
        TINY.replace(fine_tune_window=0)


def test_fine_tune_window_keeps_tied_parameters_training(problem):
    # TiLISTA's tied matrix acts in every layer: no prefix is frozen, so the window is off.
    model = build_solver("TiLISTA", problem.A, num_layers=4)
    config = TINY.replace(fine_tune_window=2, prefix_pool=64)
    assert list(trained_layers(model, 4, 1, config)) == [1, 2, 3, 4]
    assert list(trained_layers(model, 4, 0, config)) == [4]
    shared = {id(p) for p in model.shared.values()}
    assert shared and shared <= {id(p) for g in stage_param_groups(model, 4, 1, config)
                                 for p in g["params"]}
    record = train_stage(model, problem, 4, 1, config.replace(max_steps_fine_tune=4),
                         torch.Generator().manual_seed(0), problem.validation_set())
    assert record.steps == 4


def test_prefix_pool_is_refused_for_momentum_solvers_and_small_pools(problem):
    model = build_solver("HyperLISTA", problem.A, num_layers=2)
    with pytest.raises(ValueError, match="prefix_pool"):
        train_staged(model, problem, TINY.replace(prefix_pool=32), progress=False)
    with pytest.raises(ValueError, match="at least one batch"):
        TINY.replace(prefix_pool=8)
