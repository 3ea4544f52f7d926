"""The headline benchmark ("100x"): learned solvers at 16 layers vs ISTA/FISTA.

For each problem of the suite (default noiseless; SNR 40/30/20 dB; condition number 5 and
30), on the first ``n_eval`` samples of the fixed test set:

* NMSE(dB) per layer of each learned solver (LISTA, LISTA-CPSS, ALISTA, HyperLISTA), with the
  median and worst per-sample NMSE beside the set-level ratio;
* ISTA, FISTA and FISTA with continuation over a lambda grid (NMSE per iteration), and the
  support-oracle floor;
* for each learned solver, the iterations ISTA / FISTA / FISTA-continuation need (best lambda of
  the grid) to reach the NMSE the solver reaches at its last layer ("> N" if never), and the
  ratio to the number of layers;
* the wall-clock ratio of solving ``n_wall`` (10,000) fresh problems to a common NMSE target
  with each learned solver vs FISTA (its fastest lambda), measured side by side in one process
  on one device. The common target is the loosest of: every learned solver's last-layer NMSE
  and FISTA's best NMSE within its iteration cap, so every solver reaches it.

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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sparseprior.common.config import Config
from sparseprior.common.results import format_table
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_positive_int
from sparseprior.solvers.classic import fista, ista, support_oracle_ls
from sparseprior.solvers.experiments import ClassicSweep, iterations_to_reach, plot_nmse
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
CLASSIC = ("ISTA", "FISTA", "FISTA-cont")


@dataclasses.dataclass
class HeadlineConfig(Config):
    """The headline benchmark (module docstring).

    Attributes:
        problems: problems of the suite (default, snr40, snr30, snr20, kappa5, kappa30).
        models: learned solvers.
        num_layers: unrolled layers T.
        lams: the LASSO weights tried by every classic solver.
        ista_iters: ISTA's iteration cap.
        fista_iters: FISTA's iteration cap (FISTA-cont shares it).
        continuation: FISTA-cont's factor per iteration, in (0, 1).
        n_eval: test samples used (None: the whole test set).
        n_wall: problems in the wall-clock race.
        budget: staged-training preset for solvers without a checkpoint.
        max_train_steps: cap on the optimizer steps of every training stage (None: the
            preset's).
        grid_factors: HyperLISTA's grid search: factors around the committed setting.
        grid_rounds: HyperLISTA's grid search: rounds.
        grid_val_samples: HyperLISTA's grid search: validation samples used (None: all).
        wall_clock: run the wall-clock race (else later with add_wall_clock).
        seed: seeds the wall-clock problems.
        m: measurements (the suite's is 250; smaller sizes are for smoke tests).
        n: signal size (the suite's is 500).
    """

    problems: tuple[str, ...] = tuple(HEADLINE_PROBLEMS)
    models: tuple[str, ...] = LEARNED
    num_layers: int = 16
    lams: tuple[float, ...] = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002)
    ista_iters: int = 5000
    fista_iters: int = 2000
    continuation: float = 0.9
    n_eval: int | None = None
    n_wall: int = 10_000
    budget: str = "quick"
    max_train_steps: int | None = None
    grid_factors: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0)
    grid_rounds: int = 2
    grid_val_samples: int | None = None
    wall_clock: bool = True
    seed: int = 0
    m: int = 250
    n: int = 500

    def validate(self) -> None:
        self.problems, self.models = tuple(self.problems), tuple(self.models)
        self.lams, self.grid_factors = tuple(self.lams), tuple(self.grid_factors)
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
                    "n"):
            check_positive_int(getattr(self, key), key)
        if self.n_eval is not None:
            check_positive_int(self.n_eval, "n_eval")
        if not 0.0 < self.continuation < 1.0:
            raise ValueError(f"continuation must be in (0, 1), got {self.continuation!r}")


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


def _classic_traces(problem: SparseRecoveryProblem, x: torch.Tensor, y: torch.Tensor,
                    config: HeadlineConfig, device: torch.device
                    ) -> tuple[dict[str, dict[float, list[float]]], dict[str, float]]:
    A = problem.A.to(device)
    runs = {"ISTA": lambda lam: ista(A, y, lam, max_iter=config.ista_iters, x_true=x),
            "FISTA": lambda lam: fista(A, y, lam, max_iter=config.fista_iters, x_true=x),
            "FISTA-cont": lambda lam: fista(A, y, lam, max_iter=config.fista_iters, x_true=x,
                                            continuation=config.continuation)}
    traces: dict[str, dict[float, list[float]]] = {}
    seconds: dict[str, float] = {}
    for name, solve in runs.items():
        start = time.perf_counter()
        traces[name] = {float(lam): solve(float(lam)).nmse_db for lam in config.lams}
        seconds[name] = time.perf_counter() - start
    return traces, seconds


def _fastest(traces: dict[float, list[float]], target: float) -> tuple[float | None, int | None]:
    """(lambda, iterations) of the lambda reaching ``target`` first; (None, None) if none."""
    best: tuple[float | None, int | None] = (None, None)
    for lam, trace in traces.items():
        k = iterations_to_reach(trace, target)
        if k is not None and (best[1] is None or k < best[1]):
            best = (lam, k)
    return best


def _reach(traces: dict[float, list[float]], target: float, T: int) -> dict[str, Any]:
    lam, k = _fastest(traces, target)
    cap = len(next(iter(traces.values())))
    return {"lambda": lam, "iters": k, "label": str(k) if k is not None else f"> {cap}",
            "ratio": (k / T) if k is not None else None, "ratio_at_least": cap / T,
            "reached": k is not None}


@torch.no_grad()
def _time_learned(model: UnrolledSolver, y: torch.Tensor, layers: int,
                  device: torch.device) -> tuple[float, torch.Tensor]:
    model(y[:64], num_layers=layers)                     # warm-up
    _sync(device)
    start = time.perf_counter()
    out = model(y, num_layers=layers)[-1]
    _sync(device)
    return time.perf_counter() - start, out


def _time_fista(A: torch.Tensor, y: torch.Tensor, lam: float, iters: int, continuation: float |
                None, device: torch.device) -> tuple[float, torch.Tensor]:
    fista(A, y[:64], lam, max_iter=2, continuation=continuation)   # warm-up
    _sync(device)
    start = time.perf_counter()
    out = fista(A, y, lam, max_iter=iters, continuation=continuation).x
    _sync(device)
    return time.perf_counter() - start, out


def wall_clock_race(problem: SparseRecoveryProblem, models: dict[str, UnrolledSolver],
                    learned_curves: dict[str, list[float]],
                    traces: dict[str, dict[float, list[float]]], n_wall: int, seed: int,
                    device: torch.device, continuation: float = 0.9) -> dict[str, Any]:
    """Solve ``n_wall`` fresh problems to a common target with each learned solver and with
    FISTA / FISTA-cont (their fastest lambda for that target), timed side by side.

    Per learned solver the target is the looser of its last-layer NMSE and FISTA's best NMSE
    within its cap (so both reach it); the solver runs the layers it needs for it.
    """
    fista_best = min(t[-1] for t in traces["FISTA"].values())
    x, y = problem.sample(n_wall, torch.Generator().manual_seed(seed + 7_000_003))
    x, y = x.to(device), y.to(device)
    A = problem.A.to(device)
    result: dict[str, Any] = {"n_problems": n_wall, "device": str(device),
                              "threads": torch.get_num_threads(), "solvers": {}}
    fista_cache: dict[tuple[str, float, int], dict[str, Any]] = {}
    for name, model in models.items():
        target = max(learned_curves[name][-1], fista_best)
        layers = iterations_to_reach(learned_curves[name], target)
        seconds, out = _time_learned(model, y, layers, device)
        entry: dict[str, Any] = {"target_db": target, "layers": layers, "seconds": seconds,
                                 "nmse_db": nmse_db(out, x)}
        for key, cont in (("FISTA", None), ("FISTA-cont", continuation)):
            lam, k = _fastest(traces[key], target)
            if k is None:
                entry[key] = None
                continue
            if (key, lam, k) not in fista_cache:
                t_f, out_f = _time_fista(A, y, lam, k, cont, device)
                fista_cache[(key, lam, k)] = {"lambda": lam, "iters": k, "seconds": t_f,
                                              "nmse_db": nmse_db(out_f, x)}
            entry[key] = fista_cache[(key, lam, k)]
            entry[f"speedup_vs_{key}"] = entry[key]["seconds"] / seconds
        result["solvers"][name] = entry
    return result


def run_headline_problem(run: RunDir, problem_name: str, config: HeadlineConfig, *,
                         checkpoints: Path | None = None,
                         device: torch.device | str = "cpu") -> dict[str, Any]:
    """The benchmark on one problem; writes ``headline.json``, ``table.md``, a plot."""
    device = torch.device(device)
    problem = SparseRecoveryProblem.generate(ProblemConfig(
        m=config.m, n=config.n, **HEADLINE_PROBLEMS[problem_name]))
    x, y = problem.test_set()
    if config.n_eval is not None:
        x, y = x[:config.n_eval], y[:config.n_eval]
    x, y = x.to(device), y.to(device)
    T = config.num_layers
    learned: dict[str, dict[str, Any]] = {}
    models: dict[str, UnrolledSolver] = {}
    for name in config.models:
        model, info = get_solver(name, problem, problem_name, config, run, checkpoints, device)
        model.eval()
        with torch.no_grad():
            outs = model(y)
        per_sample = per_sample_nmse_db(outs[-1], x)
        learned[name] = {"nmse_db": nmse_db_per_step(outs, x), **info,
                         "split": nmse_db_split_by_support(outs[-1], x, _dense_cut(problem)),
                         "n_params": model.n_params,
                         "median_sample_nmse_db": float(per_sample.nanmedian()),
                         "worst_sample_nmse_db": float(per_sample.nan_to_num(-300.0).max())}
        models[name] = model
        run.write_json("learned.json", learned)
    traces, classic_seconds = _classic_traces(problem, x, y, config, device)
    floor = nmse_db(support_oracle_ls(problem.A.to(device), y, x), x)
    best_lam = min(traces["FISTA"], key=lambda lam: traces["FISTA"][lam][-1])
    fista_split = nmse_db_split_by_support(
        fista(problem.A.to(device), y, best_lam, max_iter=config.fista_iters).x, x,
        _dense_cut(problem))
    fista1000 = {k: min(t[min(1000, len(t)) - 1] for t in traces[k].values())
                 for k in ("FISTA", "FISTA-cont")}
    noisy = problem.config.snr_db is not None
    rows = []
    for name, info in learned.items():
        final = info["nmse_db"][-1]
        reach = {k: _reach(traces[k], final, T) for k in CLASSIC}
        info["reach"] = reach
        info["beats_fista_1000"] = final <= fista1000["FISTA"]
        rows.append({"solver": name, "params": info["n_params"],
                     **{f"L{t}": info["nmse_db"][t - 1] for t in (4, 8, 12, 16) if t <= T},
                     "median sample": info["median_sample_nmse_db"],
                     "worst sample": info["worst_sample_nmse_db"],
                     f"dense tail ({info['split']['n_dense']})": info["split"]["dense_nmse_db"],
                     **{f"{k} iters": reach[k]["label"] for k in CLASSIC},
                     "FISTA/T": (f"{reach['FISTA']['ratio']:.0f}x" if reach["FISTA"]["reached"]
                                 else f"> {reach['FISTA']['ratio_at_least']:.0f}x"),
                     "ISTA/T": (f"{reach['ISTA']['ratio']:.0f}x" if reach["ISTA"]["reached"]
                                else f"> {reach['ISTA']['ratio_at_least']:.0f}x"),
                     "gap to oracle dB": (final - floor) if noisy else "n/a"})
    wall = (wall_clock_race(problem, models, {k: v["nmse_db"] for k, v in learned.items()},
                            traces, config.n_wall, config.seed, device, config.continuation)
            if config.wall_clock else None)
    data = {"problem": problem_name, "problem_config": problem.config.to_dict(),
            "config": config.to_dict(), "device": str(device), "n_eval": int(y.shape[0]),
            "learned": learned, "oracle_floor_db": floor, "fista_best_at_1000_db": fista1000,
            "fista_best_split": {"lambda": best_lam, **fista_split},
            "classic": {k: {str(lam): [round(v_, 3) for v_ in t] for lam, t in v.items()}
                        for k, v in traces.items()},
            "classic_seconds": classic_seconds, "wall_clock": wall, "table": rows}
    run.write_json("headline.json", data)
    _write_table(run, problem, data)
    plot_nmse(run.file("nmse_vs_layer.png"), {k: v["nmse_db"] for k, v in learned.items()},
              ClassicSweep({"ISTA": traces["ISTA"], "FISTA": traces["FISTA"]},
                           classic_seconds),
              f"{problem_name}: NMSE on {y.shape[0]} test samples",
              floor if problem.config.snr_db is not None else None)
    return data


def _write_table(run: RunDir, problem: SparseRecoveryProblem, data: dict[str, Any]) -> None:
    rows, wall = data["table"], data["wall_clock"]
    floor, fista1000 = data["oracle_floor_db"], data["fista_best_at_1000_db"]
    text = (f"### {data['problem']}: {problem!r}\n\n" + format_table(rows)
            + f"\n\nSupport-oracle floor {floor:.2f} dB; best FISTA after 1000 iterations "
            f"{fista1000['FISTA']:.2f} dB (continuation {fista1000['FISTA-cont']:.2f} dB).\n")
    if wall is not None:
        wall_rows = [{"solver": k, "target dB": e["target_db"], "layers": e["layers"],
                  "seconds": e["seconds"], "NMSE dB": e["nmse_db"],
                  **{f"{c} iters": (e[c] or {}).get("iters", "n/a") for c in ("FISTA",
                                                                             "FISTA-cont")},
                  **{f"{c} s": (e[c] or {}).get("seconds", "n/a") for c in ("FISTA",
                                                                            "FISTA-cont")},
                  "speedup vs FISTA": e.get("speedup_vs_FISTA", "n/a"),
                  "speedup vs FISTA-cont": e.get("speedup_vs_FISTA-cont", "n/a")}
                 for k, e in wall["solvers"].items()]
        text += (f"\nWall clock, {wall['n_problems']} problems on {wall['device']} "
                 f"({wall['threads']} threads):\n\n" + format_table(wall_rows) + "\n")
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
    traces = {k: {float(lam): t for lam, t in v.items()} for k, v in data["classic"].items()}
    data["wall_clock"] = wall_clock_race(
        problem, models, {k: data["learned"][k]["nmse_db"] for k in models}, traces,
        n_wall or config.n_wall, config.seed, device, config.continuation)
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
            rows.append({
                "problem": name, "solver": solver,
                "L16": info["nmse_db"][-1], "median sample": info["median_sample_nmse_db"],
                "dense tail": info.get("split", {}).get("dense_nmse_db", "n/a"),
                "ISTA iters": reach["ISTA"]["label"], "FISTA iters": reach["FISTA"]["label"],
                "FISTA-cont iters": reach["FISTA-cont"]["label"],
                "FISTA@1000": data["fista_best_at_1000_db"]["FISTA"],
                "beats FISTA@1000": "yes" if info["beats_fista_1000"] else "no",
                "oracle gap dB": (info["nmse_db"][-1] - data["oracle_floor_db"]
                                  if data["problem_config"]["snr_db"] is not None else "n/a"),
                "wall x vs FISTA": wall.get(solver, {}).get("speedup_vs_FISTA", "n/a"),
                "wall x vs FISTA-cont": wall.get(solver, {}).get("speedup_vs_FISTA-cont",
                                                                 "n/a"),
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
