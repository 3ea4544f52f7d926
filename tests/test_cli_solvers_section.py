"""The solvers ``reproduce`` section: budgets in steps, flags, claims, parameter counts
(pure functions on synthetic results; the section itself is run by ``sparseprior reproduce``)."""

from __future__ import annotations

import dataclasses

from sparseprior.common.results import SECTIONS
from sparseprior.solvers.fit import LEARNED_SOLVERS, training_config
from sparseprior.solvers.headline import fit_config
from sparseprior.solvers.sections import (
    anomalies,
    headline_claims,
    quick_config,
    with_parameter_counts,
)


def _reach(iters, T=16, cap=1000):
    if iters is None:
        return {"setting": None, "iters": None, "label": f"> {cap}", "ratio": None,
                "ratio_at_least": cap / T, "reached": False}
    return {"setting": "0.01", "iters": iters, "label": str(iters), "ratio": iters / T,
            "ratio_at_least": cap / T, "reached": True}


def _data():
    healthy = [-2.0 * t for t in range(1, 17)]
    return {"problem": "default", "wall_clock": {"solvers": {"HyperLISTA": {
                "speedup_vs_strongest": 31.0}}},
            "learned": {
                "ALISTA": {"nmse_db": healthy, "n_params": 32, "kind": "trained",
                           "reach": {"FISTA": _reach(229), "ISTA": _reach(None, cap=2000)}},
                "HyperLISTA": {"nmse_db": [-5.0 * t for t in range(1, 17)], "n_params": 3,
                               "kind": "tuned", "strongest": "FISTA-cont",
                               "reach": {"FISTA-cont": _reach(None),
                                         "ISTA": _reach(1700, cap=2000)}}}}


def test_the_quick_section_counts_steps_not_seconds():
    config = quick_config()
    assert not [f.name for f in dataclasses.fields(config) if "second" in f.name]
    for name in config.models:
        spec = LEARNED_SOLVERS.get(name)
        if spec.kind == "trained":
            train = training_config(spec, fit_config(config, "default"))
            assert train.max_seconds is None and train.max_steps_per_stage <= 80
    assert "solvers" in SECTIONS


def test_flags_a_last_layer_worse_than_an_earlier_one_or_far_off_the_docs():
    data = _data()
    assert anomalies(data["learned"], "quick", "default") == []
    diverged = {"LISTA-CPSS": {"nmse_db": [-10.0] * 12 + [-30.0, -25.0, -20.0, -8.4]}}
    flags = anomalies(diverged, "quick", "default")
    assert len(flags) == 2
    assert "layer 16 (-8.4 dB) is worse than at layer 13 (-30.0 dB)" in flags[0]
    assert "documented -39.0 dB" in flags[1]
    assert anomalies(diverged, "quick", "snr20")[1:] == []      # other problems: no docs figure


def test_claims_state_target_measured_verdict_and_seed_figure():
    claims = {c.key: c for c in headline_claims(_data(), "quick", 16)}
    nmse = claims["solvers.hyperlista_nmse"]
    assert (nmse.measured, nmse.passed, nmse.target) == (-80.0, True, "<= -55 dB")
    assert "-77.7" in nmse.seed_figure
    vs_strongest = claims["solvers.hyperlista_vs_strongest_iters"]   # FISTA-cont: > 62x
    assert vs_strongest.measured is None and vs_strongest.passed is True
    assert "> 62x" in vs_strongest.note and "FISTA-cont" in vs_strongest.claim
    vs_ista = claims["solvers.hyperlista_vs_ista_iters"]
    assert vs_ista.measured == 1700 / 16 and vs_ista.passed is True
    wall = claims["solvers.hyperlista_wall_clock"]
    assert wall.measured == 31.0 and wall.passed is None          # a timing: quick decides nothing
    assert headline_claims(_data(), "full", 16)[3].passed is True
    alista = claims["solvers.alista_nmse"]
    assert alista.measured == -32.0 and alista.passed is False and alista.verdict == "NOT met"


def test_rows_get_trained_and_tuned_parameter_counts():
    rows = [{"problem": "default", "solver": "ALISTA", "L16": -32.0},
            {"problem": "default", "solver": "HyperLISTA", "L16": -80.0}]
    out = with_parameter_counts(rows, _data())
    assert list(out[0])[:5] == ["problem", "solver", "kind", "trained params",
                                "tuned hyperparams"]
    assert (out[0]["trained params"], out[0]["tuned hyperparams"]) == (32, 0)
    assert (out[1]["kind"], out[1]["trained params"], out[1]["tuned hyperparams"]) == (
        "tuned", 0, 3)
