"""Tuning HyperLISTA's three hyperparameters (c_beta, c_theta, c_ss).

The objective is the validation NMSE(dB) of the last layer (one set-level ratio, see
:mod:`.metrics`) on the problem's fixed validation set; lower is better.

* :func:`tune_hyperlista` searches with Optuna (TPE by default; ``"grid"`` and ``"random"`` as
  options). The study lives in an Optuna storage: SQLite in the run folder by default, or any
  Optuna RDB URL (``postgresql://...``, ``mysql://...``) so several machines can share one
  study. Running it again with the same storage and study name resumes the study: it runs only
  the trials still missing to ``n_trials``. Trial 0 is always the default setting
  (:attr:`HyperLISTA.DEFAULTS`), so the best found is never worse than the defaults.
* :func:`grid_search_hyperlista` is a dependency-free grid search (no Optuna) around a centre
  point, for machines without Optuna.
* :func:`fit_hyperlista` is the backprop-trained variant: Adam on the three hyperparameters
  (c_theta and c_beta get gradients; c_ss does not, the support selection is not
  differentiated), loss = MSE of the last layer on fresh training batches.

Both return a :class:`TuningResult`; with a run folder the best setting is saved as a loadable
solver (``model.safetensors``/``model.json``, see :func:`~.unrolled.load_solver`) and as
``best.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import torch

from sparseprior.common.config import Config
from sparseprior.common.device import resolve_device
from sparseprior.common.progress import progress_bar
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_choice, check_positive_int
from sparseprior.solvers.metrics import nmse_db
from sparseprior.solvers.problems import SparseRecoveryProblem
from sparseprior.solvers.unrolled import HyperLISTA, save_solver

log = logging.getLogger(__name__)

__all__ = ["SEARCH_SPACE", "TuningConfig", "TuningResult", "calibrate_hyperlista",
           "calibration_samples", "confirm_on_holdout", "evaluate_hyperparameters",
           "fit_hyperlista", "grid_search_hyperlista", "mask_storage_url", "open_study",
           "tune_hyperlista"]

#: Log-uniform search ranges of the three hyperparameters (scale-free rule of HyperLISTA).
SEARCH_SPACE: dict[str, tuple[float, float]] = {
    "c_beta": (0.05, 5.0),
    "c_theta": (0.5, 20.0),
    "c_ss": (0.1, 30.0),
}
SAMPLERS = ("tpe", "random", "grid")
WORST_DB = 50.0  # objective value for diverged settings (NaN/inf estimates)


@dataclasses.dataclass
class TuningConfig(Config):
    """Optuna search of HyperLISTA's hyperparameters.

    Attributes:
        n_trials: total trials of the study (a resumed study runs only the missing ones).
        timeout_s: stop this session after that many seconds (None: no limit).
        sampler: tpe, random or grid.
        num_layers: T of the tuned solver.
        val_samples: use the first val_samples validation samples (None: all).
        grid_points: grid sampler: log-spaced values per hyperparameter over SEARCH_SPACE.
        seed: the sampler's seed.
    """

    n_trials: int = 100
    timeout_s: float | None = 300.0
    sampler: str = "tpe"
    num_layers: int = 16
    val_samples: int | None = None
    grid_points: int = 5
    seed: int = 0

    def validate(self) -> None:
        check_positive_int(self.n_trials, "n_trials")
        if self.timeout_s is not None and not (math.isfinite(self.timeout_s)
                                               and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0 seconds or None, got {self.timeout_s!r}")
        check_choice(self.sampler, "sampler", SAMPLERS)
        check_positive_int(self.num_layers, "num_layers")
        if self.val_samples is not None:
            check_positive_int(self.val_samples, "val_samples")
        check_positive_int(self.grid_points, "grid_points")
        check_positive_int(self.seed, "seed", allow_zero=True)


@dataclasses.dataclass
class TuningResult:
    """best: the best hyperparameters; best_nmse_db / default_nmse_db: validation NMSE(dB) of
    the last layer with them / with the defaults; n_trials: trials in the study (all
    sessions); seconds: this session's wall time; storage, study_name: where the study is
    (None for the grid search); model_path: the saved best solver (None without run folder)."""

    best: dict[str, float]
    best_nmse_db: float
    default_nmse_db: float
    n_trials: int
    seconds: float
    storage: str | None = None
    study_name: str | None = None
    model_path: str | None = None
    trials: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _validation(problem: SparseRecoveryProblem, val_samples: int | None,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = problem.validation_set()
    if val_samples is not None:
        x, y = x[:val_samples], y[:val_samples]
    return x.to(device), y.to(device)


@torch.no_grad()
def evaluate_hyperparameters(model: HyperLISTA, params: dict[str, float], x: torch.Tensor,
                             y: torch.Tensor) -> float:
    """Set ``params`` on ``model`` and return the last layer's NMSE(dB) on (x* (N, n),
    y (N, m)); diverged settings give :data:`WORST_DB`."""
    for key in HyperLISTA.HYPERPARAMETERS:
        model.shared[key].fill_(float(params[key]))
    out = model(y)[-1]
    if not bool(torch.isfinite(out).all()):
        return WORST_DB
    return min(nmse_db(out, x), WORST_DB)


def _finish(model: HyperLISTA, best: dict[str, float], run: RunDir | None,
            problem: SparseRecoveryProblem, result: TuningResult) -> TuningResult:
    for key in HyperLISTA.HYPERPARAMETERS:
        model.shared[key].data.fill_(best[key])
    if run is not None:
        path = save_solver(model.cpu(), run.path / "model",
                           meta={"val_nmse_db": result.best_nmse_db, "tuning": "hyperlista",
                                 "problem": problem.config.to_dict()})
        result.model_path = str(path)
        run.write_json("best.json", {"hyperparameters": best, **result.to_dict()})
    return result


def _default_storage(run: RunDir | None) -> str:
    if run is None:
        raise ValueError("pass a run_dir (for the default SQLite storage) or a storage URL")
    return f"sqlite:///{(run.path / 'study.db').resolve()}"


def mask_storage_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``user:***@host``), for files and logs."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def open_study(storage: str, study_name: str, sampler: Any) -> Any:
    """Create or load the Optuna study; any storage failure (bad URL, missing driver,
    unreachable or unwritable database) becomes one ``ValueError`` without the password."""
    import optuna

    try:
        return optuna.create_study(study_name=study_name, storage=storage,
                                   direction="minimize", sampler=sampler, load_if_exists=True)
    except Exception as err:  # SQLAlchemy, drivers and Optuna raise many types here
        text = (str(err).strip().splitlines() or [""])[0]
        password = re.search(r"://[^:/@]*:([^@/]*)@", storage)
        if password and password.group(1):
            text = text.replace(password.group(1), "***")
        raise ValueError(f"storage {mask_storage_url(storage)!r}: cannot open Optuna study "
                         f"{study_name!r} ({type(err).__name__}: {text})") from None


def _sampler(config: TuningConfig) -> Any:
    import optuna

    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=10)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    grid = {k: _log_grid(lo, hi, config.grid_points) for k, (lo, hi) in SEARCH_SPACE.items()}
    return optuna.samplers.GridSampler(grid, seed=config.seed)


def _log_grid(low: float, high: float, points: int) -> list[float]:
    if points == 1:
        return [math.sqrt(low * high)]
    ratio = (high / low) ** (1.0 / (points - 1))
    return [low * ratio ** i for i in range(points)]


def tune_hyperlista(problem: SparseRecoveryProblem, config: TuningConfig | None = None, *,
                    run_dir: str | Path | RunDir | None = None, storage: str | None = None,
                    study_name: str = "hyperlista", device: str | torch.device = "cpu",
                    progress: bool | None = None) -> TuningResult:
    """Search c_beta, c_theta, c_ss with Optuna; see the module docstring.

    Args:
        problem: the problem whose validation set is the objective.
        config: a :class:`TuningConfig` (default: 100 trials, 300 s, TPE).
        run_dir: folder for ``study.db`` (default storage), ``best.json`` and the best solver.
        storage: an Optuna storage URL (default: SQLite in ``run_dir``).
        study_name: the study's name in the storage (resumes if it exists).
        device: where the solver runs. progress: show a progress bar (None: only on a TTY).
    """
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - optuna is in the dev/tune extras
        raise ImportError("tuning needs optuna (pip install 'sparseprior[tune]'); "
                          "grid_search_hyperlista works without it") from err
    config = config or TuningConfig()
    run = RunDir(run_dir) if isinstance(run_dir, (str, Path)) else run_dir
    storage = storage or _default_storage(run)
    dev = resolve_device(device)
    model = HyperLISTA.for_problem(problem, num_layers=config.num_layers).to(dev)
    x, y = _validation(problem, config.val_samples, dev)
    default_value = evaluate_hyperparameters(model, HyperLISTA.DEFAULTS, x, y)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(storage, study_name, _sampler(config))
    study.set_user_attr("problem", problem.config.to_dict())
    study.set_user_attr("num_layers", config.num_layers)
    if not study.trials:
        study.enqueue_trial(dict(HyperLISTA.DEFAULTS))
    done = sum(t.state.is_finished() for t in study.trials)
    todo = max(config.n_trials - done, 0)
    if run is not None:
        run.write_json("config.json", {"tuning": config.to_dict(),
                                       "storage": mask_storage_url(storage),
                                       "study_name": study_name,
                                       "problem": problem.config.to_dict()})

    def objective(trial: optuna.Trial) -> float:
        params = {k: trial.suggest_float(k, lo, hi, log=True)
                  for k, (lo, hi) in SEARCH_SPACE.items()}
        return evaluate_hyperparameters(model, params, x, y)

    start = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("HyperLISTA tuning", total=config.n_trials, completed=done,
                            status="")

        def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.update(task, advance=1, status=f"best {study.best_value:.2f} dB")

        if todo:
            study.optimize(objective, n_trials=todo, timeout=config.timeout_s,
                           callbacks=[on_trial], gc_after_trial=False)
    seconds = time.perf_counter() - start
    trials = [{"number": t.number, "value": t.value, **t.params} for t in study.trials
              if t.state == optuna.trial.TrialState.COMPLETE]
    best = {k: float(study.best_params[k]) for k in HyperLISTA.HYPERPARAMETERS}
    result = TuningResult(best=best, best_nmse_db=float(study.best_value),
                          default_nmse_db=default_value, n_trials=len(study.trials),
                          seconds=seconds, storage=mask_storage_url(storage),
                          study_name=study_name,
                          trials=trials)
    log.info("HyperLISTA tuning: %d trials, best %.2f dB (defaults %.2f dB) in %.1f s",
             result.n_trials, result.best_nmse_db, default_value, seconds)
    return _finish(model, best, run, problem, result)


def grid_search_hyperlista(problem: SparseRecoveryProblem, center: dict[str, float] | None = None,
                           *, factors: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0),
                           rounds: int = 2, num_layers: int = 16,
                           val_samples: int | None = None, device: str | torch.device = "cpu",
                           run_dir: str | Path | RunDir | None = None) -> TuningResult:
    """Grid search without Optuna: each round tries ``center[k] * f`` for every combination of
    factors ``f`` (len(factors)**3 settings) and re-centres on the best; ``rounds`` rounds.

    ``center`` defaults to :attr:`HyperLISTA.DEFAULTS`; c_ss may be 0 (then it stays 0).
    """
    check_positive_int(rounds, "rounds")
    if not factors or any(not (f > 0 and math.isfinite(f)) for f in factors):
        raise ValueError(f"factors must be positive finite numbers, got {factors!r}")
    center = dict(center or HyperLISTA.DEFAULTS)
    missing = set(HyperLISTA.HYPERPARAMETERS) - set(center)
    if missing:
        raise ValueError(f"center lacks {sorted(missing)}; give all of "
                         f"{list(HyperLISTA.HYPERPARAMETERS)}")
    run = RunDir(run_dir) if isinstance(run_dir, (str, Path)) else run_dir
    dev = resolve_device(device)
    model = HyperLISTA.for_problem(problem, num_layers=num_layers).to(dev)
    x, y = _validation(problem, val_samples, dev)
    start = time.perf_counter()
    default_value = evaluate_hyperparameters(model, HyperLISTA.DEFAULTS, x, y)
    best, best_value = dict(center), evaluate_hyperparameters(model, center, x, y)
    trials: list[dict[str, Any]] = []
    for _ in range(rounds):
        base = dict(best)
        for combo in itertools.product(factors, repeat=3):
            params = {k: base[k] * f for k, f in zip(HyperLISTA.HYPERPARAMETERS, combo,
                                                      strict=True)}
            value = evaluate_hyperparameters(model, params, x, y)
            trials.append({"number": len(trials), "value": value, **params})
            if value < best_value:
                best, best_value = params, value
    result = TuningResult(best=best, best_nmse_db=best_value, default_nmse_db=default_value,
                          n_trials=len(trials), seconds=time.perf_counter() - start,
                          trials=trials)
    return _finish(model, best, run, problem, result)


def calibration_samples(m: int, n: int, budget_macs: float = 1.5e8) -> int:
    """Prior samples used by :func:`calibrate_hyperlista` for an (m, n) A: about
    ``budget_macs / (m n)`` (one evaluation then costs ~3 * 16 * budget_macs multiply-adds),
    between 64 and 512."""
    return int(min(512, max(64, round(budget_macs / (m * n)))))


def calibrate_hyperlista(A: torch.Tensor, *, p: float = 0.1, snr_db: float | None = None,
                         num_layers: int = 16, samples: int | None = None, rounds: int = 3,
                         factors: tuple[float, ...] = (0.6, 1.0, 1.6),
                         center: dict[str, float] | None = None, seed: int = 0,
                         sparsity_rule: str | None = None, confirm: int = 0,
                         momentum: str = "linear",
                         device: str | torch.device = "cpu") -> HyperLISTA:
    """Tune HyperLISTA's 3 hyperparameters for a user's A on samples drawn from the prior.

    x* is Bernoulli(``p``)-Gaussian and y = A x* (+ noise at ``snr_db``), ``samples`` of them
    (default :func:`calibration_samples`), seeded by ``seed``: no x* of the user's data is
    used. The search is :func:`grid_search_hyperlista` around ``center`` (default: the
    shipped setting of the ``momentum`` rule, :attr:`HyperLISTA.MOMENTUM_DEFAULTS`):
    ``rounds`` rounds of len(factors)**3 settings, factors shrinking as f**(1/round) so later
    rounds refine. Budget: 1 + rounds * len(factors)**3
    evaluations (82 by default; about 10-40 s on one CPU thread up to 1000 x 2000).
    ``sparsity_rule``: the HyperLISTA's (default :attr:`HyperLISTA.DEFAULT_SPARSITY_RULE`).

    Set-level NMSE on a few hundred samples can be decided by one failing sample, so the
    search set alone may crown a setting that sits on the edge of HyperLISTA's c_theta cliff.
    The ``confirm`` best settings of the search and the starting one are scored again on a
    second, independent prior set of the same size; the one with the better of the two
    worse-set NMSEs is kept (:func:`confirm_on_holdout`). Off by default (``confirm=0``):
    on the n = 200 transfer grid ``confirm=3`` fixed one fragile calibration and lost two
    good ones (``runs/transfer-confirm-n200``), so it is not yet shown to help.

    Returns the solver with the best setting; ``model.calibration`` holds the record
    (best, prior NMSE of the shipped and of the best setting, evaluations, seconds).
    """
    from sparseprior.solvers.problems import ProblemConfig

    A = torch.as_tensor(A).float()
    if A.ndim != 2:
        raise ValueError(f"A must be an (m, n) matrix, got shape {tuple(A.shape)}")
    m, n = A.shape
    samples = calibration_samples(m, n) if samples is None else samples
    check_positive_int(samples, "samples")
    check_positive_int(rounds, "rounds")
    if not factors or any(not (f > 0 and math.isfinite(f)) for f in factors):
        raise ValueError(f"factors must be positive finite numbers, got {factors!r}")
    if confirm < 0:
        raise ValueError(f"confirm must be >= 0 (settings re-scored on a holdout set), got "
                         f"{confirm!r}")
    config = ProblemConfig(m=m, n=n, p=p, snr_db=snr_db, seed=seed, n_val=samples,
                           n_test=samples if confirm else 1)
    prior = SparseRecoveryProblem(A, config)
    dev = resolve_device(device)
    model = HyperLISTA.for_problem(prior, num_layers=num_layers, sparsity_rule=sparsity_rule,
                                   momentum=momentum).to(dev)
    x, y = _validation(prior, None, dev)
    start = time.perf_counter()
    best = dict(center or HyperLISTA.MOMENTUM_DEFAULTS[momentum])
    shipped = best_value = evaluate_hyperparameters(model, best, x, y)
    tried = [(shipped, dict(best))]
    evaluations = 1
    for r in range(rounds):
        base = dict(best)
        scaled = [f ** (1.0 / (r + 1)) for f in factors]
        for combo in itertools.product(scaled, repeat=3):
            if all(f == 1.0 for f in combo):
                continue
            params = {k: base[k] * f for k, f in zip(HyperLISTA.HYPERPARAMETERS, combo,
                                                      strict=True)}
            value = evaluate_hyperparameters(model, params, x, y)
            evaluations += 1
            tried.append((value, params))
            if value < best_value:
                best, best_value = params, value
    holdout, confirmed = None, 0
    if confirm:
        confirmed = min(confirm, len(tried) - 1) + 1
        x_h, y_h = (t.to(dev) for t in prior.test_set())
        best, best_value, holdout = confirm_on_holdout(model, tried, x_h, y_h, confirm)
    for key in HyperLISTA.HYPERPARAMETERS:
        model.shared[key].data.fill_(best[key])
    model.calibration = {"best": best, "prior_nmse_db": best_value,
                         "holdout_nmse_db": holdout, "shipped_prior_nmse_db": shipped,
                         "samples": samples, "evaluations": evaluations,
                         "holdout_evaluations": confirmed, "p": p, "snr_db": snr_db,
                         "seconds": time.perf_counter() - start,
                         "threads": torch.get_num_threads()}
    return model


def confirm_on_holdout(model: HyperLISTA, tried: list[tuple[float, dict[str, float]]],
                       x: torch.Tensor, y: torch.Tensor, top: int
                       ) -> tuple[dict[str, float], float, float]:
    """Of the ``top`` best searched settings and the starting one (``tried[0]``; ``tried``
    holds (search-set NMSE dB, setting) pairs), the one whose worse NMSE over the search set
    and the holdout set (x*, y) is best. Returns (setting, search NMSE, holdout NMSE)."""
    candidates = sorted(tried[1:], key=lambda t: t[0])[:top] + [tried[0]]
    scored = []
    for value, params in candidates:
        held = evaluate_hyperparameters(model, params, x, y)
        scored.append((max(value, held), value, held, params))
    _, value, held, params = min(scored, key=lambda s: s[0])
    return dict(params), value, held


def fit_hyperlista(model: HyperLISTA, problem: SparseRecoveryProblem, *, steps: int = 300,
                   batch_size: int = 256, rel_lr: float = 0.02, eval_every: int = 25,
                   seed: int = 0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train the three hyperparameters by backpropagation (Adam, learning rate ``rel_lr``
    times each starting value); the best-validation setting is kept. Returns
    ``{"start_nmse_db", "best_nmse_db", "best", "steps"}`` (last-layer validation NMSE)."""
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(eval_every, "eval_every")
    dev = resolve_device(device)
    model.to(dev)
    x_val, y_val = _validation(problem, None, dev)
    params = [model.shared[k] for k in HyperLISTA.HYPERPARAMETERS]
    optimizer = torch.optim.Adam([{"params": [p], "lr": rel_lr * max(abs(float(p.detach())),
                                                                      1e-4)}
                                  for p in params])
    gen = torch.Generator().manual_seed(seed)
    start = best = evaluate_hyperparameters(model, model.hyperparameters, x_val, y_val)
    best_params = model.hyperparameters
    for step in range(1, steps + 1):
        x, y = problem.sample(batch_size, gen, device=dev)
        loss = torch.mean((model(y)[-1] - x) ** 2)
        if not torch.isfinite(loss):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            value = evaluate_hyperparameters(model, model.hyperparameters, x_val, y_val)
            if value < best:
                best, best_params = value, model.hyperparameters
    with torch.no_grad():
        for key, value in best_params.items():
            model.shared[key].fill_(value)
    return {"start_nmse_db": start, "best_nmse_db": best, "best": best_params, "steps": steps}
