"""Solver experiments: classic baselines over a lambda grid, learned-solver evaluation, the
benchmark table/plot, and the runners behind ``sparseprior solvers train/eval/bench`` (the
``reproduce`` section is :func:`.sections.solvers_section`).

All NMSE figures are on the problem's fixed 1000-sample test set (GUIDE.md definition).
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
from sparseprior.solvers.classic import fista, ista
from sparseprior.solvers.fit import LEARNED_SOLVERS, FitConfig, fit_solver, make_problem
from sparseprior.solvers.metrics import (
    nmse_db,
    nmse_db_per_step,
    per_sample_nmse_db,
    support_recovery,
)
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.refit import support_oracle_ls
from sparseprior.solvers.tuning import TuningConfig

log = logging.getLogger(__name__)

DEFAULT_LAMS = (0.4, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002)
CHECKPOINT_ITERS = (16, 100, 1000)
TARGETS_DB = (-20.0, -30.0, -40.0)
LISTA_FAMILY = ("LISTA", "LISTA-CP", "LISTA-CPSS")


def iterations_to_reach(trace: Sequence[float], target_db: float) -> int | None:
    """1-based index of the first iterate with NMSE <= target, or None if never reached."""
    return next((k + 1 for k, v in enumerate(trace) if v <= target_db), None)


def reach_label(trace: Sequence[float], target_db: float) -> str:
    """The iterations to reach ``target_db`` as text ("> len" when never reached)."""
    k = iterations_to_reach(trace, target_db)
    return str(k) if k is not None else f"> {len(trace)}"


@dataclasses.dataclass
class ClassicSweep:
    """NMSE traces of ISTA/FISTA per lambda: ``traces[solver][lam] = [NMSE dB per iteration]``."""

    traces: dict[str, dict[float, list[float]]]
    seconds: dict[str, float]

    def rows(self, iters: Sequence[int] = CHECKPOINT_ITERS,
             targets: Sequence[float] = TARGETS_DB) -> list[dict[str, Any]]:
        rows = []
        for solver, by_lam in self.traces.items():
            for lam, trace in by_lam.items():
                row: dict[str, Any] = {"solver": solver, "lambda": lam}
                row.update({f"NMSE@{k}": trace[k - 1] for k in iters if k <= len(trace)})
                row.update({f"iters to {t:g} dB": reach_label(trace, t) for t in targets})
                rows.append(row)
        return rows

    def best(self, solver: str, at_iter: int) -> tuple[float, list[float]]:
        """(lambda, trace) with the lowest NMSE after ``at_iter`` iterations."""
        lam = min(self.traces[solver], key=lambda k: self.traces[solver][k][at_iter - 1])
        return lam, self.traces[solver][lam]


def classic_sweep(problem: SparseRecoveryProblem, lams: Sequence[float] = DEFAULT_LAMS,
                  max_iter: int = 1000, device: torch.device | str = "cpu") -> ClassicSweep:
    """Run ISTA and FISTA for every lambda on the test set, recording NMSE per iteration."""
    x, y = problem.test_set()
    A, x, y = problem.A.to(device), x.to(device), y.to(device)
    traces: dict[str, dict[float, list[float]]] = {"ISTA": {}, "FISTA": {}}
    seconds: dict[str, float] = {}
    for name, solver in (("ISTA", ista), ("FISTA", fista)):
        start = time.perf_counter()
        for lam in lams:
            traces[name][float(lam)] = solver(A, y, lam, max_iter=max_iter, x_true=x).nmse_db
        seconds[name] = time.perf_counter() - start
    return ClassicSweep(traces, seconds)


@torch.no_grad()
def evaluate_solver(model: torch.nn.Module, problem: SparseRecoveryProblem,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Per-layer test NMSE(dB) and last-layer support recovery of an unrolled solver."""
    x, y = problem.test_set()
    model = model.to(device).eval()
    outputs = [o.cpu() for o in model(y.to(device))]
    per_layer = nmse_db_per_step(outputs, x)
    per_sample = per_sample_nmse_db(outputs[-1], x)
    return {"nmse_db": per_layer, "final_nmse_db": per_layer[-1],
            "median_sample_nmse_db": float(per_sample.nanmedian()),
            "worst_sample_nmse_db": float(per_sample.nan_to_num(-300.0).max()),
            "support": support_recovery(outputs[-1], x, tol=1e-4)}


def oracle_floor(problem: SparseRecoveryProblem) -> float:
    """NMSE(dB) of least squares on the true support (the floor for noisy problems)."""
    x, y = problem.test_set()
    return nmse_db(support_oracle_ls(problem.A, y, x), x)


def plot_nmse(path: Path, learned: dict[str, list[float]], sweep: ClassicSweep,
              title: str, floor_db: float | None = None) -> Path:
    """Two panels: NMSE vs layer/iteration 1..T, and ISTA/FISTA over all iterations (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    T = max((len(v) for v in learned.values()), default=16)
    for name, curve in learned.items():
        ax1.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=name)
    for solver, style in (("ISTA", "--"), ("FISTA", ":")):
        lam, trace = sweep.best(solver, min(T, len(next(iter(sweep.traces[solver].values())))))
        ax1.plot(range(1, T + 1), trace[:T], style, label=f"{solver} (best lambda={lam:g})")
        lam, trace = sweep.best(solver, len(trace))
        ax2.semilogx(range(1, len(trace) + 1), trace, style, label=f"{solver} (lambda={lam:g})")
    for name, curve in learned.items():
        ax2.axhline(curve[-1], lw=0.8, color="gray")
        ax2.annotate(f"{name} @ layer {len(curve)}", (1, curve[-1]), fontsize=7, va="bottom")
    for ax in (ax1, ax2):
        if floor_db is not None:
            ax.axhline(floor_db, color="k", lw=0.8, ls="-.", label="support oracle")
        ax.set_ylabel("NMSE (dB)")
        ax.grid(alpha=0.3)
    ax1.set_xlabel("layer / iteration")
    ax2.set_xlabel("iteration (log)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclasses.dataclass
class BenchConfig(Config):
    """The LISTA-family benchmark on one problem.

    Attributes:
        models: learned solvers (comma-separated names).
        fit: how the learned solvers are trained or tuned.
        lams: the lambda grid of ISTA/FISTA.
        iters: ISTA/FISTA iterations.
        problem: the generated problem (ignored when a problem is given).
    """

    models: tuple[str, ...] = LISTA_FAMILY
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    lams: tuple[float, ...] = DEFAULT_LAMS
    iters: int = 1000
    problem: ProblemConfig = dataclasses.field(default_factory=ProblemConfig)

    def validate(self) -> None:
        self.models, self.lams = tuple(self.models), tuple(float(v) for v in self.lams)
        if not self.models:
            raise ValueError("models must name at least one learned solver")
        for name in self.models:
            LEARNED_SOLVERS.get(name)
        if not self.lams or any(not (math.isfinite(v) and v > 0) for v in self.lams):
            raise ValueError(f"lams must be positive numbers, got {self.lams!r}")
        check_positive_int(self.iters, "iters")


@dataclasses.dataclass
class BenchmarkResult:
    learned: dict[str, dict[str, Any]]
    sweep: ClassicSweep
    floor_db: float
    rows: list[dict[str, Any]]
    classic_rows: list[dict[str, Any]]


def run_benchmark(run: RunDir, problem: SparseRecoveryProblem, config: BenchConfig | None = None,
                  *, device: torch.device | str = "cpu", progress: bool | None = None,
                  checkpoints: Path | None = None) -> BenchmarkResult:
    """Fit (:func:`~.fit.fit_solver`) or load from ``checkpoints`` each model, run the classic
    sweep, write ``benchmark.json``, ``table.md`` and ``nmse_vs_layer.png`` into ``run``."""
    from sparseprior.solvers.unrolled import load_solver, save_solver

    config = config or BenchConfig()
    run.write_json("config.json", {**config.to_dict(), "problem": problem.config.to_dict()})
    learned: dict[str, dict[str, Any]] = {}
    for name in config.models:
        ckpt = (checkpoints or run.path / "checkpoints") / f"{name}.safetensors"
        if ckpt.exists():
            model = load_solver(ckpt, A=problem.A)
            seconds = json.loads(ckpt.with_suffix(".json").read_text())["meta"].get(
                "train_seconds")
            log.info("loaded %s from %s", name, ckpt)
        else:
            fitted = fit_solver(name, problem, config.fit, device=device,
                                run_dir=run.path / "training" / name, progress=progress)
            model, seconds = fitted.model, fitted.info["seconds"]
            save_solver(model, run.path / "checkpoints" / f"{name}.safetensors",
                        meta={"train_seconds": seconds, "budget": config.fit.budget})
        metrics = evaluate_solver(model, problem, device)
        metrics["train_seconds"] = seconds
        metrics["n_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        learned[name] = metrics
        run.write_json("learned.json", learned)  # survive an interruption
    sweep = classic_sweep(problem, config.lams, max_iter=config.iters, device=device)
    floor = oracle_floor(problem)
    rows = []
    for name, m in learned.items():
        row: dict[str, Any] = {"solver": name, "kind": LEARNED_SOLVERS.get(name).kind,
                               "params": m["n_params"]}
        row.update({f"L{t}": m["nmse_db"][t - 1] for t in (1, 2, 4, 8, 12, 16)
                    if t <= len(m["nmse_db"])})
        row[f"median sample L{len(m['nmse_db'])}"] = m["median_sample_nmse_db"]
        row["train s"] = m["train_seconds"] if m["train_seconds"] is not None else "n/a"
        rows.append(row)
    result = BenchmarkResult(learned, sweep, floor, rows, sweep.rows())
    run.write_json("benchmark.json", {
        "problem": problem.config.to_dict(), "learned": learned, "oracle_floor_db": floor,
        "classic": {s: {str(k): v for k, v in d.items()} for s, d in sweep.traces.items()},
        "classic_seconds": sweep.seconds, "table": rows, "classic_table": result.classic_rows})
    run.write_text("table.md", "### Learned solvers: test NMSE (dB) per layer\n\n"
                   + format_table(rows) + "\n\n### ISTA / FISTA over lambda\n\n"
                   + format_table(result.classic_rows) + "\n")
    # Noiseless: the oracle is exact to round-off (~-120 dB) and would only squash the plot.
    plot_nmse(run.file("nmse_vs_layer.png"), {k: v["nmse_db"] for k, v in learned.items()},
              sweep, f"NMSE on the test set, {problem!r}",
              floor if problem.config.snr_db is not None else None)
    return result


# --------------------------------------------------------------------------------------------
# Runners behind ``sparseprior solvers train / eval``
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FitRun(Config):
    """Fit one learned solver on one problem.

    Attributes:
        solver: the learned solver to train or tune.
        fit: how it is trained or tuned.
        problem: the generated problem (ignored when a problem file is given).
    """

    solver: str = dataclasses.field(default="LISTA-CPSS", metadata={
        "help": f"the learned solver to train or tune: {LEARNED_SOLVERS.help()}."})
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    problem: ProblemConfig = dataclasses.field(default_factory=ProblemConfig)

    def validate(self) -> None:
        LEARNED_SOLVERS.get(self.solver)


def run_fit(run: RunDir, config: FitRun, *, problem_file: str | Path | None = None,
            resume: bool = True, device: torch.device | str = "cpu",
            progress: bool | None = None) -> dict[str, Any]:
    """Fit ``config.solver`` into ``run`` (resumable), evaluate it on the test set; writes
    ``fit.json`` (rerun with ``solvers train --config fit.json``), ``problem.json``,
    ``model.safetensors`` and ``test_metrics.json``; returns the metrics
    with ``kind``, ``seconds`` and ``checkpoint``."""
    problem = make_problem(config.problem, problem_file)
    run.write_json("problem.json", problem.config.to_dict())
    run.write_json("fit.json", config.replace(problem=problem.config).to_dict())
    fitted = fit_solver(config.solver, problem, config.fit, device=device, run_dir=run,
                        resume=resume, progress=progress)
    metrics = evaluate_solver(fitted.model, problem, device)
    run.write_json("test_metrics.json", metrics)
    return {**metrics, "kind": fitted.kind, "seconds": fitted.info["seconds"],
            "checkpoint": str(run.file("model.safetensors"))}


def run_eval(checkpoint: str | Path, problem: ProblemConfig | None = None, *,
             problem_file: str | Path | None = None,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Per-layer test NMSE(dB) and support recovery of a saved solver on a problem."""
    from sparseprior.solvers.unrolled import load_solver

    prob = make_problem(problem, problem_file)
    return evaluate_solver(load_solver(checkpoint, A=prob.A), prob, device)


@dataclasses.dataclass
class TuneRun(Config):
    """Tune HyperLISTA with Optuna on one problem.

    Attributes:
        tuning: the Optuna search.
        problem: the generated problem (ignored when a problem file is given).
        study_name: the study's name in the storage (an existing study is resumed).
    """

    tuning: TuningConfig = dataclasses.field(default_factory=TuningConfig)
    problem: ProblemConfig = dataclasses.field(default_factory=ProblemConfig)
    study_name: str = "hyperlista"


def run_tune(run: RunDir, config: TuneRun, *, storage: str | None = None,
             problem_file: str | Path | None = None,
             device: torch.device | str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Optuna search (:func:`~.tuning.tune_hyperlista`) into ``run``, then the test metrics
    of the best solver (``test_metrics.json``). ``storage``: an Optuna URL (default SQLite in
    ``run``; its password never reaches files or logs). Returns (TuningResult, metrics)."""
    from sparseprior.solvers.tuning import tune_hyperlista
    from sparseprior.solvers.unrolled import load_solver

    problem = make_problem(config.problem, problem_file)
    res = tune_hyperlista(problem, config.tuning, run_dir=run, storage=storage,
                          study_name=config.study_name, device=device)
    metrics = evaluate_solver(load_solver(res.model_path, A=problem.A), problem, device)
    run.write_json("test_metrics.json", metrics)
    return res, metrics
