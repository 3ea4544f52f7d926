"""One way to fit a learned solver, whatever kind it is: the learned-solver registry.

A learned solver is either **trained** (its parameters learned by the layer-wise staged
schedule, :func:`~.training.train_staged`) or **tuned** (a few hyperparameters searched on the
validation set, starting from a shipped setting, e.g. HyperLISTA's 3). Each solver declares
which, once, in :data:`LEARNED_SOLVERS`; :func:`fit_solver` is the one "train or tune" used by
the CLI, the benchmarks, compressive sensing and the report. Budgets are optimizer steps, grid
points and validation samples, never seconds, so a fit gives the same solver on a busy machine.

Adding a tuned solver is one file and one registration::

    class MySolver(UnrolledSolver): ...            # parameters are the hyperparameters

    def fit_mine(model, problem, config, device) -> dict:
        ...                                        # search, set model's parameters
        return {"source": "my search", "val_nmse_db": best}

    register_solver("MySolver", MySolver, kind="tuned", fit=fit_mine)

A trained solver needs no fit function (``kind="trained"``); ``presets="scalar"`` picks the
``scalar-<budget>`` training presets (larger learning rates) for solvers with only per-layer
scalars. Registering also makes the class known to :func:`~.unrolled.build_solver` and
:func:`~.unrolled.load_solver` (``unrolled.SOLVERS``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sparseprior.common.config import Config
from sparseprior.common.registry import Registry
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_positive_int
from sparseprior.solvers.problems import ProblemConfig, SparseRecoveryProblem
from sparseprior.solvers.unrolled import (
    ALISTA,
    LISTA,
    LISTA_CP,
    LISTA_CPSS,
    LISTA_SS,
    SOLVERS,
    HyperLISTA,
    TiLISTA,
    UnrolledSolver,
    save_solver,
)

log = logging.getLogger(__name__)

__all__ = ["FitConfig", "FitResult", "LEARNED_SOLVERS", "LearnedSolver", "TUNED_FILE",
           "check_memory", "describe_problem", "fit_solver", "load_problem", "make_problem",
           "problem_memory_bytes", "register_solver", "tuned_hyperparameters", "unregister_solver",
           "write_problem"]

KINDS = ("trained", "tuned")
TUNED_FILE = Path(__file__).with_name("hyperlista_tuned.json")


@dataclasses.dataclass
class FitConfig(Config):
    """How to fit a learned solver; every budget is counted in steps or points, never seconds.

    Attributes:
        budget: staged-training preset of trained solvers (quick, cpu, gpu or paper).
        num_layers: unrolled layers T.
        max_stage_steps: trained solvers: cap on the optimizer steps of every stage (None: the
            preset's caps).
        grid_factors: tuned solvers: factors tried on each hyperparameter around the centre.
        grid_rounds: tuned solvers: grid rounds, each re-centred on the best setting.
        val_samples: tuned solvers: validation samples the search scores on (None: all).
        tuned_from: tuned solvers: the shipped setting the search starts from (a problem name
            of hyperlista_tuned.json; unknown names use its "default" entry).
    """

    budget: str = "quick"
    num_layers: int = 16
    max_stage_steps: int | None = None
    grid_factors: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0)
    grid_rounds: int = 2
    val_samples: int | None = None
    tuned_from: str = "default"

    def validate(self) -> None:
        from sparseprior.solvers.training import BUDGETS

        if self.budget not in BUDGETS or self.budget.startswith("scalar-"):
            raise ValueError(f"budget must be one of quick, cpu, gpu, paper, got "
                             f"{self.budget!r}")
        check_positive_int(self.num_layers, "num_layers")
        if self.max_stage_steps is not None:
            check_positive_int(self.max_stage_steps, "max_stage_steps")
        self.grid_factors = tuple(float(f) for f in self.grid_factors)
        if not self.grid_factors or any(not (math.isfinite(f) and f > 0)
                                        for f in self.grid_factors):
            raise ValueError(f"grid_factors must be positive finite numbers, got "
                             f"{self.grid_factors!r}")
        check_positive_int(self.grid_rounds, "grid_rounds")
        if self.val_samples is not None:
            check_positive_int(self.val_samples, "val_samples")


FitFunction = Callable[[UnrolledSolver, SparseRecoveryProblem, FitConfig, torch.device],
                       dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class LearnedSolver:
    """A registered learned solver: its class, whether it is trained or tuned, how to fit it.

    ``fit(model, problem, config, device) -> info`` sets the model's parameters in place and
    returns at least ``{"source": str, "val_nmse_db": float}`` (tuned solvers must give one;
    trained ones use the staged trainer). ``presets``: prefix of the training presets
    (``"scalar"`` -> ``scalar-<budget>`` when it exists). ``memory(m, n, T)``: estimated
    trainable parameters, used to refuse sizes that cannot fit before allocating them.
    """

    name: str
    cls: type[UnrolledSolver]
    kind: str
    fit: FitFunction | None = None
    presets: str = ""
    n_params: Callable[[int, int, int], int] | None = None


LEARNED_SOLVERS: Registry[LearnedSolver] = Registry("learned solver")


def register_solver(name: str, cls: type[UnrolledSolver], *, kind: str,
                    fit: FitFunction | None = None, presets: str = "",
                    n_params: Callable[[int, int, int], int] | None = None,
                    replace: bool = False) -> LearnedSolver:
    """Register a learned solver (see the module docstring); returns its spec."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(cls, type) and issubclass(cls, UnrolledSolver)):
        raise TypeError(f"cls must be an UnrolledSolver subclass, got {cls!r}")
    if kind == "tuned" and fit is None:
        raise ValueError(f"tuned solver {name!r} needs a fit function (the search)")
    spec = LearnedSolver(name, cls, kind, fit, presets, n_params)
    LEARNED_SOLVERS.register(name, spec, replace=replace)
    SOLVERS[name] = cls            # build_solver / load_solver find it by name
    return spec


def unregister_solver(name: str) -> None:
    """Forget a registered solver (tests, notebooks); unknown names are ignored."""
    if name in LEARNED_SOLVERS:
        LEARNED_SOLVERS.unregister(name)
        SOLVERS.pop(name, None)


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FitResult:
    """model: the fitted solver (eval mode, on ``device``); kind: "trained" or "tuned";
    info: ``source``, ``val_nmse_db`` (last layer, validation set), ``n_params``, ``seconds``
    (wall time: informative only, it depends on the machine) and what the fit adds."""

    model: UnrolledSolver
    kind: str
    info: dict[str, Any]


def training_config(spec: LearnedSolver, config: FitConfig):
    """The staged-training config of a trained solver: its preset, with the step cap."""
    from sparseprior.solvers.training import BUDGETS

    key = f"{spec.presets}-{config.budget}" if spec.presets else config.budget
    train = BUDGETS.get(key, BUDGETS[config.budget])
    if config.max_stage_steps is not None:
        caps = train.max_steps_fine_tune
        fine = (tuple(min(c, config.max_stage_steps) for c in caps)
                if isinstance(caps, tuple) else min(caps or train.max_steps_per_stage,
                                                    config.max_stage_steps))
        train = train.replace(max_steps_per_stage=min(train.max_steps_per_stage,
                                                      config.max_stage_steps),
                              max_steps_fine_tune=fine)
    return train


def fit_solver(name: str, problem: SparseRecoveryProblem, config: FitConfig | None = None, *,
               device: torch.device | str = "cpu", run_dir: str | Path | RunDir | None = None,
               resume: bool = True, progress: bool | None = False) -> FitResult:
    """Build solver ``name`` for ``problem.A`` and train or tune it, as it declares.

    run_dir: trained solvers keep their staged-training state there (resumable) and both
    kinds save ``model.safetensors``/``model.json`` there. Raises ``ValueError`` for an
    unknown name or a size whose parameters cannot fit in memory.
    """
    from sparseprior.solvers.training import train_staged

    spec = LEARNED_SOLVERS.get(name)
    config = config or FitConfig()
    device = torch.device(device)
    if spec.n_params is not None:
        check_memory(16 * spec.n_params(problem.m, problem.n, config.num_layers),
                     f"{name} with T={config.num_layers} for (m, n) = ({problem.m}, "
                     f"{problem.n}) (parameters, gradients and Adam state)")
    run = RunDir(run_dir) if isinstance(run_dir, (str, Path)) else run_dir
    model = spec.cls.for_problem(problem, num_layers=config.num_layers).to(device)
    start = time.perf_counter()
    if spec.fit is None:  # trained solvers use the staged trainer
        result = train_staged(model, problem, training_config(spec, config),
                              run_dir=run, device=device, progress=progress, resume=resume)
        info: dict[str, Any] = {"source": f"trained ({config.budget})",
                                "val_nmse_db": result.val_nmse_db[-1],
                                "steps": sum(r.steps for r in result.history)}
    else:
        info = dict(spec.fit(model, problem, config, device))
        if run is not None:
            save_solver(model.cpu(), run.path / "model",
                        meta={"val_nmse_db": info.get("val_nmse_db"), "source": info["source"]})
    info["seconds"] = time.perf_counter() - start
    info["n_params"] = model.n_params
    return FitResult(model.to(device).eval(), spec.kind, info)


# --------------------------------------------------------------------------------------------
# HyperLISTA: tuned from its shipped setting by a grid search
# --------------------------------------------------------------------------------------------
def tuned_hyperparameters(problem: str = "default") -> dict[str, float]:
    """HyperLISTA hyperparameters tuned with Optuna (committed in ``hyperlista_tuned.json``)
    for ``problem`` (its "default" entry for other names); the class defaults if absent."""
    if TUNED_FILE.is_file():
        data = json.loads(TUNED_FILE.read_text())
        entry = data.get(problem) or data.get("default")
        if entry:
            return {k: float(entry[k]) for k in HyperLISTA.HYPERPARAMETERS}
    return dict(HyperLISTA.DEFAULTS)


def fit_hyperlista_grid(model: UnrolledSolver, problem: SparseRecoveryProblem,
                        config: FitConfig, device: torch.device) -> dict[str, Any]:
    """Grid search around the shipped setting (:func:`~.tuning.grid_search_hyperlista`)."""
    from sparseprior.solvers.tuning import grid_search_hyperlista

    res = grid_search_hyperlista(problem, tuned_hyperparameters(config.tuned_from),
                                 factors=config.grid_factors, rounds=config.grid_rounds,
                                 num_layers=config.num_layers,
                                 val_samples=config.val_samples, device=device)
    with torch.no_grad():
        for key, value in res.best.items():
            model.shared[key].fill_(value)
    return {"source": "grid search", "trials": res.n_trials, "val_nmse_db": res.best_nmse_db,
            "hyperparameters": dict(res.best)}


def _lista(m: int, n: int, T: int) -> int:
    return T * (n * m + n * n + 1)


def _cp(m: int, n: int, T: int) -> int:
    return T * (m * n + 1)


register_solver("LISTA", LISTA, kind="trained", n_params=_lista)
register_solver("LISTA-CP", LISTA_CP, kind="trained", n_params=_cp)
register_solver("LISTA-SS", LISTA_SS, kind="trained", n_params=_lista)
register_solver("LISTA-CPSS", LISTA_CPSS, kind="trained", n_params=_cp)
register_solver("TiLISTA", TiLISTA, kind="trained", n_params=lambda m, n, T: m * n + 2 * T)
register_solver("ALISTA", ALISTA, kind="trained", presets="scalar",
                n_params=lambda m, n, T: m * n + 2 * T)   # the fixed W costs as much
register_solver("HyperLISTA", HyperLISTA, kind="tuned", fit=fit_hyperlista_grid,
                n_params=lambda m, n, T: 3 * m * n)        # W and the pseudo-inverse buffers


# --------------------------------------------------------------------------------------------
# Problems: memory estimate up front, one-line errors for bad files
# --------------------------------------------------------------------------------------------
def problem_memory_bytes(config: ProblemConfig) -> int:
    """Bytes a generated problem needs at its peak: A in float64 while generated (twice for a
    conditioned A, whose SVD needs copies) plus float32 A and the fixed validation/test sets."""
    a = config.m * config.n
    peak_a = a * 8 * (4 if config.kappa is not None else 2) + a * 4
    sets = (config.n_val + config.n_test) * (config.m + config.n) * 4
    return peak_a + sets


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(estimate: int, what: str) -> None:
    """Raise ``ValueError`` with the estimate when ``estimate`` bytes exceed free memory."""
    free = available_memory_bytes()
    if free is not None and estimate > free:
        raise ValueError(f"{what} needs about {estimate / 2**30:.1f} GiB but only "
                         f"{free / 2**30:.1f} GiB of memory is available; choose smaller sizes")


def load_problem(path: str | Path) -> SparseRecoveryProblem:
    """Load a problem file (``.npz``/``.safetensors``); a corrupt or foreign file is a
    one-line ``ValueError`` naming it."""
    import zipfile

    from safetensors import SafetensorError

    try:
        return SparseRecoveryProblem.load(path)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"problem file {str(path)!r} is not a valid problem ({err})") from None
    except (OSError, KeyError, TypeError, RuntimeError, EOFError, zipfile.BadZipFile,
            SafetensorError) as err:
        raise ValueError(f"problem file {str(path)!r} is not a valid problem file "
                         f"({type(err).__name__}: {err})") from None


def make_problem(config: ProblemConfig | None = None, path: str | Path | None = None
                 ) -> SparseRecoveryProblem:
    """The problem in ``path`` if given, else a generated one (its memory checked first)."""
    if path is not None:
        return load_problem(path)
    config = config or ProblemConfig()
    check_memory(problem_memory_bytes(config), f"a problem with (m, n) = ({config.m}, "
                 f"{config.n}) and {config.n_val} + {config.n_test} validation/test samples")
    return SparseRecoveryProblem.generate(config)


def write_problem(problem: SparseRecoveryProblem, path: str | Path) -> Path:
    """Save ``problem`` atomically; an unwritable path is a one-line ``ValueError``."""
    try:
        return problem.save(path)
    except OSError as err:
        raise ValueError(f"cannot write the problem file {str(path)!r} "
                         f"({err.strerror or type(err).__name__})") from None


def describe_problem(problem: SparseRecoveryProblem) -> str:
    """A few lines: the problem, its condition number, Lipschitz constant and coherences."""
    from sparseprior.solvers.analytic import coherence_report

    rep = coherence_report(problem.A)
    return (f"{problem!r}\n  condition number {problem.condition_number:.3g}, "
            f"L = ||A||_2^2 = {problem.lipschitz:.4g}\n"
            f"  mutual coherence of A {rep.mutual_coherence:.4f}; ALISTA's analytic W: "
            f"generalised coherence {rep.generalized_coherence:.4f}, constraint error "
            f"{rep.constraint_error:.1e}")
