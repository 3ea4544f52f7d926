"""The headline benchmark on a tiny problem: structure and internal consistency."""

import json
import statistics

import pytest
import torch

from sparseprior.common.runs import RunDir
from sparseprior.solvers.amp import bayes_amp
from sparseprior.solvers.classic import CLASSIC_SOLVERS, fista
from sparseprior.solvers.experiments import iterations_to_reach, reach_label
from sparseprior.solvers.fit import TUNED_FILE
from sparseprior.solvers.headline import (
    HeadlineConfig,
    add_wall_clock,
    run_headline,
    tuned_hyperparameters,
)
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import HyperLISTA

TINY = {"m": 30, "n": 60, "n_eval": 64, "n_wall": 200, "ista_iters": 100, "fista_iters": 80,
        "lams": (0.05, 0.01, 0.002), "grid_factors": (0.5, 1.0, 2.0), "grid_rounds": 1,
        "max_train_steps": 10, "models": ("ALISTA", "HyperLISTA"), "lam_min": 1e-4}


@pytest.fixture(scope="module")
def headline(tmp_path_factory):
    out = tmp_path_factory.mktemp("headline")
    rows = run_headline(out, HeadlineConfig(problems=("snr20",), **TINY))
    return out, rows


def test_results_are_consistent(headline):
    out, rows = headline
    assert [(r["problem"], r["solver"]) for r in rows] == [("snr20", "ALISTA"),
                                                           ("snr20", "HyperLISTA")]
    data = json.loads((out / "snr20" / "headline.json").read_text())
    assert data["classic_split"] == "validation"
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, snr_db=20.0))
    x, y = (t[:64] for t in prob.test_set())
    for name, info in data["learned"].items():
        final = info["nmse_db"][-1]
        assert len(info["nmse_db"]) == 16 and info["median_sample_nmse_db"] <= 0
        assert info["strongest"] in (None, "FISTA", "FISTA-cont", "FISTA-restart")
        for solver in ("ISTA", "FISTA", "FISTA-cont", "FISTA-restart"):
            reach = info["reach"][solver]
            traces = data["classic"][solver]          # validation traces
            if reach["setting"] is not None:          # the setting fastest on validation
                k = reach["val_iters"]
                assert traces[reach["setting"]][k - 1] <= final + 1e-3
                assert all(min(t[:k - 1], default=1e9) > final - 1e-3 for t in traces.values())
                # ... and its iterations are counted again on the test set
                kwargs = ({"factor": reach["continuation"]} if solver == "FISTA-cont" else {})
                test = CLASSIC_SOLVERS.get(solver)(prob.A, y, reach["lam"], x_true=x,
                                                   max_iter=reach["cap"], **kwargs).nmse_db
                assert reach["iters"] == iterations_to_reach(test, final)
            else:
                assert all(min(t) > final - 1e-3 for t in traces.values())
                assert reach["label"] == f"> {len(next(iter(traces.values())))}"
        wall = data["wall_clock"]["solvers"][name]
        assert wall["target_db"] == pytest.approx(final) and wall["seconds"] > 0
        if "baseline" in wall:   # the median of the per-round ratios (interleaved rounds)
            ratios = [b / o for b, o in zip(wall["baseline"]["round_seconds"],
                                            wall["round_seconds"], strict=True)]
            assert len(ratios) == wall["rounds"]
            assert wall["speedup_vs_strongest"] == pytest.approx(statistics.median(ratios))
            low, high = wall["speedup_vs_strongest_iqr"]
            assert low <= wall["speedup_vs_strongest"] <= high
    # Bayes-AMP (told p and the SNR) is a reference column, recomputable from the test set
    amp = bayes_amp(prob.A, y, 0.1, snr_db=20.0, max_iter=100, x_true=x).nmse_db
    assert data["bayes_amp_nmse_db"] == pytest.approx(amp, abs=1e-6)
    for row in data["table"]:
        assert row["Bayes-AMP iters"] == reach_label(amp, row["target dB"])
    # the lambda grid was extended below the given one until the bias floor cleared every
    # reachable target (or lam_min stopped it)
    assert data["lams_used"][:3] == [0.05, 0.01, 0.002]
    assert data["oracle_floor_db"] < min(i["nmse_db"][-1] for i in data["learned"].values())
    assert (out / "summary.md").is_file() and (out / "snr20" / "nmse_vs_layer.png").is_file()
    assert (out / "snr20" / "checkpoints" / "HyperLISTA.safetensors").is_file()


def test_wall_clock_rerun_from_checkpoints(headline):
    out, _ = headline
    data = add_wall_clock(RunDir(out / "snr20"), None, "cpu", n_wall=100)
    assert data["wall_clock"]["n_problems"] == 100
    assert set(data["wall_clock"]["solvers"]) == {"ALISTA", "HyperLISTA"}


def test_cli_headline_reuses_checkpoints(cli, headline, tmp_path):
    out, _ = headline
    ck = tmp_path / "ck" / "default"
    ck.mkdir(parents=True)
    for suffix in (".safetensors", ".json"):
        src = out / "snr20" / "checkpoints" / f"HyperLISTA{suffix}"
        (ck / src.name).write_bytes(src.read_bytes())
    code, stdout, err = cli(["solvers", "headline", "--problems", "default",
                             "--models", "HyperLISTA", "--m", "30", "--n", "60", "--n-eval",
                             "32", "--n-wall", "100", "--ista-iters", "50", "--fista-iters", "40",
                             "--checkpoints", str(tmp_path / "ck"), "--out",
                             str(tmp_path / "run"), "--device", "cpu"])
    assert code == 0, err
    data = json.loads((tmp_path / "run" / "default" / "headline.json").read_text())
    assert data["learned"]["HyperLISTA"]["source"].endswith("HyperLISTA.safetensors")
    assert "HyperLISTA" in stdout
    code, _, err = cli(["solvers", "headline", "--problems", "nope"])
    assert code == 2 and "unknown headline problem 'nope'" in err


def test_config_validation_and_tuned_file():
    with pytest.raises(ValueError, match="unknown headline problem"):
        HeadlineConfig(problems=("default", "snr10"))
    with pytest.raises(ValueError, match="unknown solver"):
        HeadlineConfig(models=("ISTA",))
    with pytest.raises(ValueError, match="continuations"):
        HeadlineConfig(continuations=(1.0,))
    assert set(tuned_hyperparameters()) == set(HyperLISTA.HYPERPARAMETERS)
    assert tuned_hyperparameters() == HyperLISTA.DEFAULTS      # the file records the defaults
    entry = json.loads(TUNED_FILE.read_text())["default"]
    assert (entry["rule"], entry["sparsity_rule"]) == (
        "scale-free", HyperLISTA.DEFAULT_SPARSITY_RULE)
    A = SparseRecoveryProblem.generate(ProblemConfig(m=10, n=20, seed=1)).A
    assert HyperLISTA(A).rule == entry["rule"]


def test_fista_continuation():
    prob = SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, seed=4))
    x, y = prob.sample(64, 0)
    plain = fista(prob.A, y, 1e-4, max_iter=60, x_true=x).nmse_db
    cont = fista(prob.A, y, 1e-4, max_iter=60, x_true=x, continuation=0.8).nmse_db
    assert cont[-1] < plain[-1] - 3.0
    same = fista(prob.A, y, 0.02, max_iter=2000, continuation=0.8).x
    ref = fista(prob.A, y, 0.02, max_iter=2000).x
    torch.testing.assert_close(same, ref, atol=1e-3, rtol=0)        # same LASSO solution
    with pytest.raises(ValueError, match="continuation"):
        fista(prob.A, y, 0.1, continuation=1.0)


def test_amp_reference_only_for_iid_gaussian_a():
    from sparseprior.solvers.headline import _amp_reference

    ill = SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, kappa=30.0, n_test=8))
    assert _amp_reference(ill, *ill.test_set(), 10) is None
    iid = SparseRecoveryProblem.generate(ProblemConfig(m=30, n=60, n_test=8))
    trace = _amp_reference(iid, *iid.test_set(), 10)
    assert len(trace) == 10 and trace[-1] < trace[0]
