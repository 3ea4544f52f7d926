"""The headline benchmark ("100x"): learned solvers at 16 layers vs ISTA/FISTA.

For each problem of the suite (default noiseless; SNR 40/30/20 dB; condition number 5 and
30), on the first ``n_eval`` samples of the fixed test set:

* NMSE(dB) per layer of each learned solver (LISTA, LISTA-CPSS, ALISTA, HyperLISTA), with the
  median and worst per-sample NMSE beside the set-level ratio;
* the classic baselines ISTA, FISTA, FISTA-cont (lambda-continuation, schedules from
  ``continuations``) and FISTA-restart (O'Donoghue-Candes), traced on the **validation** set over
  a lambda grid that is extended downwards until the bias floor of the best FISTA variant lies
  1 dB below every target (the floor is reported), and the support-oracle floor;
* the race, per learned solver and per target (its own last-layer NMSE and the fixed
  ``race_targets``, -40/-60 dB, when it reaches them): for every classic family the setting
  reaching the target fastest on validation, then its iterations on the **test** set;
  "strongest" = the fastest FISTA variant on validation; iterations-to-match vs the strongest
  and vs ISTA; budgets are iteration counts (steps), never seconds;
* the wall-clock race: ``n_wall`` (10,000) fresh problems solved to each target by the learned
  solver (the layers it needs) and by the strongest baseline (its chosen setting, its test
  iterations), side by side in one process on one device; ISTA's time extrapolated from 50
  timed iterations.

Learned solvers come from ``checkpoints/<problem>/<solver>.safetensors`` when present;
otherwise they are fitted here by :func:`~.fit.fit_solver`: trained solvers with the staged
schedule (``budget``), tuned ones (HyperLISTA) by the Optuna-free grid search around the
committed tuned setting (``hyperlista_tuned.json``). Results:
``<out>/<problem>/headline.json``, ``table.md``, a plot, and a summary over all problems
(``summary.json``, ``summary.md``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sparseprior.common.config import Config
from sparseprior.common.results import format_table
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_positive_int
from sparseprior.solvers.amp import bayes_amp
from sparseprior.solvers.classic import CLASSIC_SOLVERS
from sparseprior.solvers.experiments import (
    ClassicSweep,
    iterations_to_reach,
    plot_nmse,
    reach_label,
)
from sparseprior.solvers.fit import (
    LEARNED_SOLVERS,
    FitConfig,
    fit_solver,
    tuned_hyperparameters,
)
from sparseprior.solvers.metrics import (
    nmse_db,
    nmse_db_per_step,
    nmse_db_split_by_support,
    per_sample_nmse_db,
)
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.refit import support_oracle_ls
from sparseprior.solvers.unrolled import UnrolledSolver, load_solver, save_solver

log = logging.getLogger(__name__)

__all__ = ["HEADLINE_PROBLEMS", "HeadlineConfig", "LEARNED", "add_wall_clock", "get_solver",
           "fit_config", "run_headline",
           "run_headline_problem", "summarize_headline", "tuned_hyperparameters"]

#: Problem name -> ProblemConfig fields (everything else default: m=250, n=500, p=0.1).
HEADLINE_PROBLEMS: dict[str, dict[str, float]] = {
    "default": {},
    "snr40": {"snr_db": 40.0},
    "snr30": {"snr_db": 30.0},
    "snr20": {"snr_db": 20.0},
    "kappa5": {"kappa": 5.0},
    "kappa30": {"kappa": 30.0},
}
LEARNED = ("LISTA", "LISTA-CPSS", "ALISTA", "HyperLISTA")
CLASSIC = ("ISTA", "FISTA", "FISTA-cont", "FISTA-restart")


@dataclasses.dataclass
class HeadlineConfig(Config):
    """The headline benchmark (module docstring).

    Attributes:
        problems: problems of the suite (default, snr40, snr30, snr20, kappa5, kappa30).
        models: learned solvers.
        num_layers: unrolled layers T.
        lams: the LASSO weights tried by every classic solver, extended downwards (/10 at a
            time, not below lam_min) until the baselines' bias floor lies 1 dB below every
            race target.
        ista_iters: ISTA's iteration cap.
        fista_iters: FISTA's iteration cap (FISTA-cont and FISTA-restart share it).
        continuations: FISTA-cont's schedules (factor per iteration, in (0, 1)); lambda and
            schedule are chosen on the validation set.
        race_targets: fixed NMSE targets (dB) raced besides each learned solver's own
            last-layer NMSE.
        lam_min: the smallest lambda the grid extension may reach.
        n_eval: test samples used (None: the whole test set).
        n_wall: problems in the wall-clock race.
        budget: staged-training preset for solvers without a checkpoint.
        max_train_steps: cap on the optimizer steps of every training stage (None: the
            preset's).
        grid_factors: HyperLISTA's grid search: factors around the committed setting.
        grid_rounds: HyperLISTA's grid search: rounds.
        grid_val_samples: HyperLISTA's grid search: validation samples used (None: all).
        wall_clock: run the wall-clock race (else later with add_wall_clock).
        wall_rounds: interleaved timing rounds of each (learned solver, baseline) pair; the
            reported ratio is the median of the per-round ratios.
        seed: seeds the wall-clock problems.
        amp_iters: iterations of the Bayes-AMP reference (told p and the SNR; reported for
            i.i.d. Gaussian A only, not a LASSO baseline: it never enters "strongest").
        m: measurements (the suite's is 250; smaller sizes are for smoke tests).
        n: signal size (the suite's is 500).
    """

    problems: tuple[str, ...] = tuple(HEADLINE_PROBLEMS)
    models: tuple[str, ...] = LEARNED
    num_layers: int = 16
    lams: tuple[float, ...] = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002)
    ista_iters: int = 5000
    fista_iters: int = 2000
    continuations: tuple[float, ...] = (0.9, 0.95)
    race_targets: tuple[float, ...] = (-40.0, -60.0)
    lam_min: float = 1e-8
    n_eval: int | None = None
    n_wall: int = 10_000
    budget: str = "quick"
    max_train_steps: int | None = None
    grid_factors: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0)
    grid_rounds: int = 2
    grid_val_samples: int | None = None
    wall_clock: bool = True
    wall_rounds: int = 5
    seed: int = 0
    amp_iters: int = 100
    m: int = 250
    n: int = 500

    def validate(self) -> None:
        self.problems, self.models = tuple(self.problems), tuple(self.models)
        self.lams, self.grid_factors = tuple(self.lams), tuple(self.grid_factors)
        self.continuations = tuple(float(c) for c in self.continuations)
        self.race_targets = tuple(float(t) for t in self.race_targets)
        for name in self.problems:
            if name not in HEADLINE_PROBLEMS:
                raise ValueError(f"unknown headline problem {name!r}; choose from "
                                 f"{list(HEADLINE_PROBLEMS)}")
        for name in self.models:
            if name not in LEARNED_SOLVERS:
                raise ValueError(f"unknown solver {name!r}; choose from "
                                 f"{LEARNED_SOLVERS.help()}")
        if self.max_train_steps is not None:
            check_positive_int(self.max_train_steps, "max_train_steps")
        fit_config(self, "default")                   # validates the budget and the grid
        if not self.lams or any(not (lam > 0 and math.isfinite(lam)) for lam in self.lams):
            raise ValueError(f"lams must be positive numbers, got {self.lams!r}")
        for key in ("num_layers", "ista_iters", "fista_iters", "n_wall", "grid_rounds", "m",
                    "n", "wall_rounds", "amp_iters"):
            check_positive_int(getattr(self, key), key)
        if self.n_eval is not None:
            check_positive_int(self.n_eval, "n_eval")
        if not self.continuations or not all(0.0 < c < 1.0 for c in self.continuations):
            raise ValueError(f"continuations must be factors in (0, 1), got "
                             f"{self.continuations!r}")
        if not (self.lam_min > 0 and math.isfinite(self.lam_min)):
            raise ValueError(f"lam_min must be a positive number, got {self.lam_min!r}")


def _dense_cut(problem: SparseRecoveryProblem) -> int:
    """Samples with more non-zeros than LISTA-CPSS's support-selection cap (13% of n) form
    the "dense" tail reported separately."""
    return int(0.13 * problem.n)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def get_solver(name: str, problem: SparseRecoveryProblem, problem_name: str,
               config: HeadlineConfig, run: RunDir, checkpoints: Path | None,
               device: torch.device) -> tuple[UnrolledSolver, dict[str, Any]]:
    """Load ``checkpoints/<problem_name>/<name>.safetensors``, or fit the solver with
    :func:`~.fit.fit_solver` (and save it to ``run/checkpoints``). Returns (model, info) with
    info["source"], info["kind"] and seconds."""
    ckpt = None if checkpoints is None else checkpoints / problem_name / f"{name}.safetensors"
    kind = LEARNED_SOLVERS.get(name).kind
    if ckpt is not None and ckpt.is_file():
        meta = json.loads(ckpt.with_suffix(".json").read_text()).get("meta", {})
        return (load_solver(ckpt, A=problem.A, device=device),
                {"source": str(ckpt), "kind": kind, "seconds": meta.get("train_seconds"),
                 "val_nmse_db": meta.get("val_nmse_db")})
    fitted = fit_solver(name, problem, fit_config(config, problem_name), device=device)
    info = {**fitted.info, "kind": fitted.kind}
    save_solver(fitted.model, run.path / "checkpoints" / f"{name}.safetensors",
                meta={"train_seconds": info["seconds"], "val_nmse_db": info["val_nmse_db"],
                      "source": info["source"]})
    return fitted.model, info


def fit_config(config: HeadlineConfig, problem_name: str) -> FitConfig:
    """The :class:`~.fit.FitConfig` of a headline run (budgets in steps and grid points)."""
    return FitConfig(budget=config.budget, num_layers=config.num_layers,
                     max_stage_steps=config.max_train_steps, grid_factors=config.grid_factors,
                     grid_rounds=config.grid_rounds, val_samples=config.grid_val_samples,
                     tuned_from=problem_name)


# --------------------------------------------------------------------------------------------
# Classic baselines: settings chosen on the validation set, raced on the test set
# --------------------------------------------------------------------------------------------
Setting = dict[str, Any]     # {"lam": float, "continuation": float | None}


def _setting_key(setting: Setting) -> str:
    lam, cont = setting["lam"], setting.get("continuation")
    return f"{lam:g}" if cont is None else f"{lam:g}@{cont:g}"


def _settings(family: str, lams: Sequence[float], config: HeadlineConfig) -> list[Setting]:
    """The (lambda, schedule) settings a classic family is tried with."""
    conts: Sequence[float | None] = config.continuations if family == "FISTA-cont" else (None,)
    return [{"lam": float(lam), "continuation": c} for lam in lams for c in conts]


def _solve(family: str, A: torch.Tensor, y: torch.Tensor, setting: Setting, iters: int,
           x_true: torch.Tensor | None = None) -> Any:
    """Run classic family ``family`` with ``setting`` (the registered named baselines)."""
    kwargs: dict[str, Any] = {"max_iter": iters, "x_true": x_true}
    if family == "FISTA-cont":
        kwargs["factor"] = setting["continuation"]
    return CLASSIC_SOLVERS.get(family)(A, y, setting["lam"], **kwargs)


def _cap(family: str, config: HeadlineConfig) -> int:
    return config.ista_iters if family == "ISTA" else config.fista_iters


def _classic_traces(problem: SparseRecoveryProblem, x: torch.Tensor, y: torch.Tensor,
                    config: HeadlineConfig, device: torch.device, lams: Sequence[float]
                    ) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, Setting]],
                               dict[str, float]]:
    """NMSE traces per family and setting on (x, y) -- the validation set."""
    A = problem.A.to(device)
    traces: dict[str, dict[str, list[float]]] = {}
    settings: dict[str, dict[str, Setting]] = {}
    seconds: dict[str, float] = {}
    for family in CLASSIC:
        start = time.perf_counter()
        traces[family], settings[family] = {}, {}
        for setting in _settings(family, lams, config):
            key = _setting_key(setting)
            traces[family][key] = _solve(family, A, y, setting, _cap(family, config),
                                         x).nmse_db
            settings[family][key] = setting
        seconds[family] = time.perf_counter() - start
    return traces, settings, seconds


def _extend_lambda_grid(problem: SparseRecoveryProblem, x: torch.Tensor, y: torch.Tensor,
                        config: HeadlineConfig, device: torch.device, target_db: float
                        ) -> tuple[dict[str, dict[str, list[float]]],
                                   dict[str, dict[str, Setting]], dict[str, float], list[float]]:
    """Validation traces over ``config.lams``, extended by lambda/10 steps (down to
    ``lam_min``) until the best FISTA family's floor (best final NMSE) is 1 dB below
    ``target_db``, so that no race is lost to the LASSO bias."""
    lams = sorted(set(config.lams), reverse=True)
    traces, settings, seconds = _classic_traces(problem, x, y, config, device, lams)
    while _floor(traces) > target_db - 1.0 and lams[-1] / 10.0 >= config.lam_min:
        lams.append(lams[-1] / 10.0)
        more, more_settings, more_s = _classic_traces(problem, x, y, config, device, lams[-1:])
        for family in CLASSIC:
            traces[family].update(more[family])
            settings[family].update(more_settings[family])
            seconds[family] += more_s[family]
    return traces, settings, seconds, lams


def _floor(traces: dict[str, dict[str, list[float]]]) -> float:
    """Best final validation NMSE of the FISTA families (the bias floor of the grid)."""
    return min(t[-1] for f, v in traces.items() if f != "ISTA" for t in v.values())


def _fastest(traces: dict[str, list[float]], target: float) -> tuple[str | None, int | None]:
    """(setting key, iterations) of the setting reaching ``target`` first; (None, None) if
    none does."""
    best: tuple[str | None, int | None] = (None, None)
    for key, trace in traces.items():
        k = iterations_to_reach(trace, target)
        if k is not None and (best[1] is None or k < best[1]):
            best = (key, k)
    return best


class _TestRuns:
    """Test-set traces of the settings chosen on validation (each run once, cached)."""

    def __init__(self, problem: SparseRecoveryProblem, x: torch.Tensor, y: torch.Tensor,
                 config: HeadlineConfig, device: torch.device) -> None:
        self.A, self.x, self.y = problem.A.to(device), x, y
        self.config = config
        self.cache: dict[tuple[str, str], list[float]] = {}

    def trace(self, family: str, setting: Setting) -> list[float]:
        key = (family, _setting_key(setting))
        if key not in self.cache:
            self.cache[key] = _solve(family, self.A, self.y, setting,
                                     _cap(family, self.config), self.x).nmse_db
        return self.cache[key]


def _race(traces: dict[str, dict[str, list[float]]], settings: dict[str, dict[str, Setting]],
          tests: _TestRuns, target: float, layers: int | None) -> dict[str, Any]:
    """Every classic family against one target: the setting chosen on validation, its
    iterations on the test set, the ratio to the learned solver's ``layers``; and the
    strongest family (fewest validation iterations among the FISTA variants)."""
    out: dict[str, Any] = {"target_db": target, "layers": layers, "families": {}}
    for family in CLASSIC:
        key, k_val = _fastest(traces[family], target)
        cap = len(next(iter(traces[family].values())))
        entry: dict[str, Any] = {"setting": key, "val_iters": k_val, "cap": cap}
        if key is not None:
            setting = settings[family][key]
            k_test = iterations_to_reach(tests.trace(family, setting), target)
            entry.update(lam=setting["lam"], continuation=setting["continuation"],
                         iters=k_test)
        else:
            entry.update(lam=None, continuation=None, iters=None)
        entry["label"] = str(entry["iters"]) if entry["iters"] is not None else f"> {cap}"
        entry["reached"] = entry["iters"] is not None
        entry["ratio"] = (entry["iters"] / layers) if (layers and entry["reached"]) else None
        entry["ratio_at_least"] = cap / layers if layers else None
        out["families"][family] = entry
    fista_like = [f for f in CLASSIC if f != "ISTA" and out["families"][f]["val_iters"]]
    out["strongest"] = (min(fista_like, key=lambda f: out["families"][f]["val_iters"])
                        if fista_like else None)
    return out


def _reach(race: dict[str, Any], family: str) -> dict[str, Any]:
    """The per-family entry of a race, as stored in ``learned[...]["reach"]``."""
    return dict(race["families"][family])


@torch.no_grad()
def _time_learned(model: UnrolledSolver, y: torch.Tensor, layers: int,
                  device: torch.device) -> tuple[float, torch.Tensor]:
    model(y[:64], num_layers=layers)                     # warm-up
    _sync(device)
    start = time.perf_counter()
    out = model(y, num_layers=layers)[-1]
    _sync(device)
    return time.perf_counter() - start, out


def _time_classic(family: str, A: torch.Tensor, y: torch.Tensor, setting: Setting, iters: int,
                  device: torch.device) -> tuple[float, torch.Tensor]:
    _solve(family, A, y[:64], setting, 2)                # warm-up
    _sync(device)
    start = time.perf_counter()
    out = _solve(family, A, y, setting, iters).x
    _sync(device)
    return time.perf_counter() - start, out


def wall_clock_race(problem: SparseRecoveryProblem, models: dict[str, UnrolledSolver],
                    races: dict[str, list[dict[str, Any]]], settings: dict[str, dict[str,
                                                                                     Setting]],
                    n_wall: int, seed: int, device: torch.device,
                    ista_probe_iters: int = 50, rounds: int = 5) -> dict[str, Any]:
    """Solve ``n_wall`` fresh problems per (learned solver, target): the learned solver with
    the layers it needs, the strongest classic baseline with its validation-chosen setting
    for the iterations it needed on the test set, timed side by side on one device in
    ``rounds`` interleaved rounds (seconds: medians; speed-up: the median of the per-round
    ratios, with its quartiles). ISTA's time is extrapolated from ``ista_probe_iters`` timed
    iterations (marked so).

    ``races[name]``: the race records of :func:`_race` for that solver."""
    x, y = problem.sample(n_wall, torch.Generator().manual_seed(seed + 7_000_003))
    x, y = x.to(device), y.to(device)
    A = problem.A.to(device)
    result: dict[str, Any] = {"n_problems": n_wall, "device": str(device),
                              "threads": torch.get_num_threads(), "solvers": {}, "races": []}
    cache: dict[tuple[str, str, int], dict[str, Any]] = {}

    def timed(family: str, key: str, iters: int) -> dict[str, Any]:
        if (family, key, iters) not in cache:
            seconds, out = _time_classic(family, A, y, settings[family][key], iters, device)
            cache[(family, key, iters)] = {"setting": key, "iters": iters, "seconds": seconds,
                                           "nmse_db": nmse_db(out, x)}
        return cache[(family, key, iters)]

    for name, model in models.items():
        for race in races.get(name, []):
            layers = race["layers"]
            if layers is None:
                continue
            strongest = race["strongest"]
            best = race["families"].get(strongest) if strongest else None
            paired = best is not None and best["iters"] is not None
            own, base = [], []
            for _ in range(rounds):
                seconds, out = _time_learned(model, y, layers, device)
                own.append(seconds)
                if paired:
                    seconds_b, out_b = _time_classic(strongest, A, y,
                                                     settings[strongest][best["setting"]],
                                                     best["iters"], device)
                    base.append(seconds_b)
            entry: dict[str, Any] = {"solver": name, "target_db": race["target_db"],
                                     "own_target": race.get("own_target", False),
                                     "layers": layers, "seconds": statistics.median(own),
                                     "round_seconds": own,
                                     "nmse_db": nmse_db(out, x), "strongest": race["strongest"],
                                     "rounds": rounds}
            seconds = entry["seconds"]
            if paired:
                ratios = [b / o for b, o in zip(base, own, strict=True)]
                quart = statistics.quantiles(ratios, n=4) if rounds > 1 else ratios * 3
                entry["baseline"] = {"setting": best["setting"], "iters": best["iters"],
                                     "seconds": statistics.median(base),
                                     "round_seconds": base, "nmse_db": nmse_db(out_b, x)}
                entry["speedup_vs_strongest"] = statistics.median(ratios)
                entry["speedup_vs_strongest_iqr"] = [quart[0], quart[-1]]
            ista = race["families"]["ISTA"]
            if ista["iters"] is not None:
                probe = timed("ISTA", ista["setting"], min(ista_probe_iters, ista["iters"]))
                est = probe["seconds"] / probe["iters"] * ista["iters"]
                entry["ISTA"] = {"setting": ista["setting"], "iters": ista["iters"],
                                 "seconds_extrapolated": est}
                entry["speedup_vs_ISTA"] = est / seconds
            result["races"].append(entry)
            if entry["own_target"]:
                result["solvers"][name] = entry
    return result


def _amp_reference(problem: SparseRecoveryProblem, x: torch.Tensor, y: torch.Tensor,
                   iters: int) -> list[float] | None:
    """Test NMSE (dB) per iteration of Bayes-AMP told p and the SNR; None for an
    ill-conditioned A, where AMP's i.i.d. assumption fails (it diverges)."""
    if problem.config.kappa is not None:
        return None
    return bayes_amp(problem.A.to(x.device), y, problem.config.p,
                     snr_db=problem.config.snr_db, max_iter=iters, x_true=x).nmse_db


def _learned_curves(model: UnrolledSolver, x: torch.Tensor, y: torch.Tensor
                    ) -> tuple[list[float], torch.Tensor]:
    with torch.no_grad():
        outs = model(y)
    return nmse_db_per_step(outs, x), outs[-1]


def run_headline_problem(run: RunDir, problem_name: str, config: HeadlineConfig, *,
                         checkpoints: Path | None = None,
                         device: torch.device | str = "cpu") -> dict[str, Any]:
    """The benchmark on one problem; writes ``headline.json``, ``table.md``, a plot.

    Classic baselines are tuned on the validation set (lambda, continuation schedule, the
    fastest setting per target); every figure reported is measured on the test set."""
    device = torch.device(device)
    problem = SparseRecoveryProblem.generate(ProblemConfig(
        m=config.m, n=config.n, **HEADLINE_PROBLEMS[problem_name]))
    x, y = problem.test_set()
    xv, yv = problem.validation_set()
    if config.n_eval is not None:
        x, y, xv, yv = x[:config.n_eval], y[:config.n_eval], xv[:config.n_eval], yv[:config.n_eval]
    x, y, xv, yv = x.to(device), y.to(device), xv.to(device), yv.to(device)
    T = config.num_layers
    learned: dict[str, dict[str, Any]] = {}
    models: dict[str, UnrolledSolver] = {}
    for name in config.models:
        model, info = get_solver(name, problem, problem_name, config, run, checkpoints, device)
        model.eval()
        curve, last = _learned_curves(model, x, y)
        per_sample = per_sample_nmse_db(last, x)
        learned[name] = {"nmse_db": curve, **info,
                         "split": nmse_db_split_by_support(last, x, _dense_cut(problem)),
                         "n_params": model.n_params,
                         "params_kind": "hyperparameters" if info.get("kind") == "tuned"
                         else "trained",
                         "median_sample_nmse_db": float(per_sample.nanmedian()),
                         "worst_sample_nmse_db": float(per_sample.nan_to_num(-300.0).max())}
        models[name] = model
        run.write_json("learned.json", learned)
    targets = {name: info["nmse_db"][-1] for name, info in learned.items()}
    reachable = [t for t in config.race_targets
                 if any(min(info["nmse_db"]) <= t for info in learned.values())]
    hardest = min([*targets.values(), *reachable])
    traces, settings, classic_seconds, lams = _extend_lambda_grid(problem, xv, yv, config,
                                                                  device, hardest)
    floor_grid = {f: min(t[-1] for t in v.values()) for f, v in traces.items()}
    tests = _TestRuns(problem, x, y, config, device)
    floor = nmse_db(support_oracle_ls(problem.A.to(device), y, x), x)
    fista_split = _best_fista_split(problem, traces, settings, tests, x, y, device, config)
    fista1000 = {f: min(t[min(1000, len(t)) - 1] for t in traces[f].values())
                 for f in CLASSIC if f != "ISTA"}
    amp = _amp_reference(problem, x, y, config.amp_iters)
    noisy = problem.config.snr_db is not None
    races: dict[str, list[dict[str, Any]]] = {}
    rows = []
    for name, info in learned.items():
        final = info["nmse_db"][-1]
        own = _race(traces, settings, tests, final, T)
        own["own_target"] = True
        races[name] = [own] + [
            _race(traces, settings, tests, t, iterations_to_reach(info["nmse_db"], t))
            for t in config.race_targets if t != final]
        info["reach"] = {f: _reach(own, f) for f in CLASSIC}
        info["strongest"] = own["strongest"]
        info["races"] = races[name]
        info["beats_fista_1000"] = final <= min(fista1000.values())
        for race in races[name]:
            if race["layers"] is None:
                continue
            strong = race["strongest"]
            s_entry = race["families"].get(strong) if strong else None
            ista_e = race["families"]["ISTA"]
            rows.append({
                "solver": name, f"params ({info['params_kind']})": info["n_params"],
                "target dB": race["target_db"], "layers": race["layers"],
                "strongest baseline": (f"{strong} ({s_entry['setting']})" if strong
                                       else "none reaches it"),
                "its iters": s_entry["label"] if s_entry else "n/a",
                "iters x": (f"{s_entry['ratio']:.1f}x" if s_entry and s_entry["reached"]
                            else "n/a"),
                "ISTA iters": ista_e["label"],
                "ISTA x": (f"{ista_e['ratio']:.0f}x" if ista_e["reached"]
                           else f"> {ista_e['ratio_at_least']:.0f}x"),
                "Bayes-AMP iters": _amp_label(amp, race["target_db"]),
                "L16": final, "median sample": info["median_sample_nmse_db"],
                f"dense tail ({info['split']['n_dense']})": info["split"]["dense_nmse_db"],
                "gap to oracle dB": (final - floor) if noisy else "n/a"})
    wall = (wall_clock_race(problem, models, races, settings, config.n_wall, config.seed,
                            device, rounds=config.wall_rounds) if config.wall_clock else None)
    data = {"problem": problem_name, "problem_config": problem.config.to_dict(),
            "config": config.to_dict(), "device": str(device), "n_eval": int(y.shape[0]),
            "learned": learned, "oracle_floor_db": floor, "fista_best_at_1000_db": fista1000,
            "fista_best_split": fista_split, "lams_used": lams, "bayes_amp_nmse_db": amp,
            "baseline_floor_db": floor_grid,
            "classic": {k: {key: [round(v_, 3) for v_ in t] for key, t in v.items()}
                        for k, v in traces.items()},
            "classic_settings": settings, "classic_split": "validation",
            "classic_seconds": classic_seconds, "wall_clock": wall, "table": rows}
    run.write_json("headline.json", data)
    _write_table(run, problem, data)
    plot_nmse(run.file("nmse_vs_layer.png"), {k: v["nmse_db"] for k, v in learned.items()},
              ClassicSweep({f: {settings[f][k]["lam"]: t for k, t in traces[f].items()
                                if settings[f][k]["continuation"] is None}
                            for f in ("ISTA", "FISTA")}, classic_seconds),
              f"{problem_name}: NMSE on {y.shape[0]} test samples (classic: validation)",
              floor if problem.config.snr_db is not None else None)
    return data


def _amp_label(amp: list[float] | None, target: float) -> str:
    """Iterations Bayes-AMP needs to reach ``target`` ("n/a": not a Gaussian A)."""
    return "n/a (not i.i.d.)" if amp is None else reach_label(amp, target)


def _best_fista_split(problem: SparseRecoveryProblem, traces: dict[str, dict[str, list[float]]],
                      settings: dict[str, dict[str, Setting]], tests: _TestRuns,
                      x: torch.Tensor, y: torch.Tensor, device: torch.device,
                      config: HeadlineConfig) -> dict[str, Any]:
    """Typical / dense-tail NMSE on the test set of FISTA's best validation setting."""
    key = min(traces["FISTA"], key=lambda k: traces["FISTA"][k][-1])
    out = _solve("FISTA", problem.A.to(device), y, settings["FISTA"][key],
                 config.fista_iters).x
    return {"lambda": settings["FISTA"][key]["lam"],
            **nmse_db_split_by_support(out, x, _dense_cut(problem))}


def _write_table(run: RunDir, problem: SparseRecoveryProblem, data: dict[str, Any]) -> None:
    rows, wall = data["table"], data["wall_clock"]
    floor, fista1000 = data["oracle_floor_db"], data["fista_best_at_1000_db"]
    grid_floor = ", ".join(f"{k} {v:.1f}" for k, v in data["baseline_floor_db"].items())
    text = (f"### {data['problem']}: {problem!r}\n\n" + format_table(rows)
            + f"\n\nSupport-oracle floor {floor:.2f} dB. Classic settings chosen on the "
            f"validation set; lambda grid {[f'{v:g}' for v in data['lams_used']]}; bias floor "
            f"of the grid (best final validation NMSE, dB): {grid_floor}. Best after 1000 "
            "iterations: " + ", ".join(f"{k} {v:.2f} dB" for k, v in fista1000.items())
            + ". Bayes-AMP: approximate message passing with the prior's posterior mean, told "
            "p and the SNR; a reference for i.i.d. Gaussian A (it diverges on "
            "ill-conditioned A), not a LASSO baseline.\n")
    if wall is not None:
        wall_rows = [{"solver": e["solver"], "target dB": e["target_db"], "layers": e["layers"],
                      "seconds": e["seconds"], "NMSE dB": e["nmse_db"],
                      "strongest": e["strongest"] or "n/a",
                      "its iters": e.get("baseline", {}).get("iters", "n/a"),
                      "its s": e.get("baseline", {}).get("seconds", "n/a"),
                      "its NMSE dB": e.get("baseline", {}).get("nmse_db", "n/a"),
                      "wall x": e.get("speedup_vs_strongest", "n/a"),
                      "wall x IQR": ("{:.2f}-{:.2f}".format(*e["speedup_vs_strongest_iqr"])
                                     if "speedup_vs_strongest_iqr" in e else "n/a"),
                      "ISTA x (extrapolated)": e.get("speedup_vs_ISTA", "n/a")}
                     for e in wall["races"]]
        rounds = wall["races"][0].get("rounds", 1) if wall["races"] else 1
        text += (f"\nWall clock, {wall['n_problems']} problems on {wall['device']} "
                 f"({wall['threads']} threads; {rounds} interleaved rounds, medians):\n\n"
                 + format_table(wall_rows) + "\n")
    run.write_text("table.md", text)


def add_wall_clock(run: RunDir, checkpoints: Path | None, device: torch.device | str,
                   n_wall: int | None = None) -> dict[str, Any]:
    """Run (or rerun) the wall-clock race of a finished ``headline.json`` in ``run``, loading
    the solvers from ``checkpoints/<problem>/`` or ``run/checkpoints``; updates the files."""
    device = torch.device(device)
    data = run.read_json("headline.json")
    config = HeadlineConfig.from_dict({k: v for k, v in data["config"].items()
                                       if k != "max_train_seconds"})   # runs before 2026-11
    problem = SparseRecoveryProblem.generate(ProblemConfig(**data["problem_config"]))
    models = {}
    for name in data["learned"]:
        paths = [run.path / "checkpoints" / f"{name}.safetensors"]
        if checkpoints is not None:
            paths.insert(0, checkpoints / data["problem"] / f"{name}.safetensors")
        path = next((p for p in paths if p.is_file()), None)
        if path is None:
            log.warning("add_wall_clock: no checkpoint for %s; skipped", name)
            continue
        models[name] = load_solver(path, A=problem.A, device=device).eval()
    races = {k: data["learned"][k]["races"] for k in models}
    data["wall_clock"] = wall_clock_race(problem, models, races, data["classic_settings"],
                                         n_wall or config.n_wall, config.seed, device,
                                         rounds=config.wall_rounds)
    run.write_json("headline.json", data)
    _write_table(run, problem, data)
    return data


def summarize_headline(out: str | Path) -> list[dict[str, Any]]:
    """Collect ``<out>/<problem>/headline.json`` into ``summary.json`` / ``summary.md``."""
    out = Path(out)
    rows: list[dict[str, Any]] = []
    for name in HEADLINE_PROBLEMS:
        path = out / name / "headline.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        wall = (data["wall_clock"] or {}).get("solvers", {})
        for solver, info in data["learned"].items():
            reach = info["reach"]
            strong = info.get("strongest")
            best1000 = min(data["fista_best_at_1000_db"].values())
            rows.append({
                "problem": name, "solver": solver,
                f"params ({info.get('params_kind', 'trained')})": info["n_params"],
                "L16": info["nmse_db"][-1], "median sample": info["median_sample_nmse_db"],
                "dense tail": info.get("split", {}).get("dense_nmse_db", "n/a"),
                "strongest baseline": strong or "none reaches it",
                "its iters": reach[strong]["label"] if strong else "n/a",
                "ISTA iters": reach["ISTA"]["label"],
                **{f"{f} iters": reach[f]["label"] for f in CLASSIC if f != "ISTA"},
                "best FISTA-family @1000": best1000,
                "beats FISTA@1000": "yes" if info["beats_fista_1000"] else "no",
                "oracle gap dB": (info["nmse_db"][-1] - data["oracle_floor_db"]
                                  if data["problem_config"]["snr_db"] is not None else "n/a"),
                "wall x vs strongest": wall.get(solver, {}).get("speedup_vs_strongest", "n/a"),
                "wall x vs ISTA (extrap.)": wall.get(solver, {}).get("speedup_vs_ISTA", "n/a"),
            })
    RunDir(out).write_json("summary.json", rows)
    RunDir(out).write_text("summary.md", format_table(rows) + "\n")
    return rows


def run_headline(out: str | Path, config: HeadlineConfig | None = None, *,
                 checkpoints: str | Path | None = None,
                 device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Run every problem of ``config.problems`` into ``<out>/<problem>`` and summarise."""
    config = config or HeadlineConfig()
    ck = Path(checkpoints) if checkpoints is not None else None
    for name in config.problems:
        log.info("headline benchmark: %s", name)
        run_headline_problem(RunDir(Path(out) / name), name, config, checkpoints=ck,
                             device=device)
    return summarize_headline(out)


def headline_names(problems: str | Sequence[str]) -> tuple[str, ...]:
    """Parse "default,snr30" or a sequence into validated problem names."""
    names = [p.strip() for p in problems.split(",")] if isinstance(problems, str) else problems
    names = [n for n in names if n]
    for n in names:
        if n not in HEADLINE_PROBLEMS:
            raise ValueError(f"unknown headline problem {n!r}; choose from "
                             f"{list(HEADLINE_PROBLEMS)}")
    return tuple(names)
