"""Layer-wise staged training of unrolled solvers (the LISTA-CPSS schedule, Chen et al. 2018).

For each layer t = 1..T (loss: MSE of layer t's output against x*):

* stage A trains only the parameters layer t introduces, at ``init_lr``;
* stages B, C, ... (one per entry of ``fine_tune_lrs``) train layers 1..t together with Adam;
  layer i's learning rate is ``lr * layer_decay ** (t - i)`` (earlier layers move less).

Each stage starts a fresh Adam optimiser, draws fresh batches ``problem.sample(batch_size, gen)``
from one seeded generator, evaluates the NMSE of layer t on the problem's fixed validation set
every ``eval_every`` steps, stops once it has not improved for ``patience`` steps (or after the
stage's step cap), and ends with the best-validation parameters restored.

Run folder (optional): ``config.json``; ``metrics.jsonl`` (one record per finished stage, then a
``final`` record); ``checkpoints/stage-NNN`` (the solver after the last finished stage, via
:func:`~sparseprior.solvers.unrolled.save_solver`); ``train_state.json`` (progress, history and
the generator state; written last and atomically, so it always names a complete checkpoint);
``model.safetensors``/``model.json`` (the trained solver). With ``resume=True`` an interrupted
run continues from its last finished stage and ends with the same parameters as an
uninterrupted one (on CPU, bit for bit).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from sparseprior.common.checkpoint import load_safetensors_checkpoint
from sparseprior.common.config import Config
from sparseprior.common.device import resolve_device
from sparseprior.common.progress import progress_bar
from sparseprior.common.runs import RunDir
from sparseprior.common.seeding import make_generator
from sparseprior.common.validation import check_positive_int, check_range
from sparseprior.solvers.metrics import nmse_db
from sparseprior.solvers.problems import SparseRecoveryProblem
from sparseprior.solvers.unrolled import UnrolledSolver, save_solver

log = logging.getLogger(__name__)

__all__ = [
    "BUDGETS",
    "StageRecord",
    "StagedTrainingConfig",
    "TrainingResult",
    "budget_for",
    "check_prefix_pool",
    "evaluate_layers",
    "stage_lr",
    "stage_name",
    "stage_param_groups",
    "train_stage",
    "train_staged",
    "trained_layers",
    "warm_start_layer",
]

STATE_FILE = "train_state.json"


# --------------------------------------------------------------------------------------------
# Config and presets
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StagedTrainingConfig(Config):
    """Hyper-parameters of staged training (defaults: the published full schedule).

    init_lr: stage-A learning rate (new layer only). fine_tune_lrs: one fine-tuning stage per
    entry (all layers so far). layer_decay: factor per layer of age on fine-tuning lrs.
    batch_size: fresh samples per step. patience: stop a stage after this many steps without a
    validation improvement. eval_every: steps between validation checks. max_steps_per_stage:
    step cap of stage A (and of the fine-tuning stages unless ``max_steps_fine_tune`` is set:
    one cap for all fine-tuning stages, or a tuple with one per entry of ``fine_tune_lrs``).
    val_samples: use only the first ``val_samples`` of the validation set for early stopping
    (None: all). warm_start: before stage A of layer t > 1, copy layer t-1's trained
    parameters into layer t where names and shapes match (not in the published schedule; a new
    layer then starts from its trained neighbour instead of from the ISTA weights, which saves
    many steps on small budgets). prefix_pool: stage A only, for solvers whose layer reads
    only x_{t-1} (:attr:`UnrolledSolver.markov`): draw this many samples once per stage, run
    the frozen layers 1..t-1 on them (and on the validation set) once, and train layer t on
    batches of that pool, so a stage-A step costs one layer instead of t (None: fresh samples
    through every layer at every step, as published). fine_tune_window: fine-tuning stages
    train only the last K layers t-K+1..t (None: all t layers, as published; with
    ``layer_decay`` 0.3 a layer 3 steps older moves at 2.7% of the rate anyway); with a
    ``prefix_pool`` the frozen layers 1..t-K are then run once on the pool as in stage A, so a
    fine-tuning step costs K layers instead of t. seed: seeds the training-batch
    generator. max_seconds: a
    hard wall-clock budget for the whole run (None: none): each stage gets an equal share of
    the time still left (unused time carries over) and stops when its share is spent; every
    stage still runs at least one step, so all layers get trained.
    """

    init_lr: float = 5e-4
    fine_tune_lrs: tuple[float, ...] = (1e-4, 1e-5)
    layer_decay: float = 0.3
    batch_size: int = 64
    patience: int = 4000
    eval_every: int = 10
    max_steps_per_stage: int = 1_000_000
    max_steps_fine_tune: int | tuple[int, ...] | None = None
    val_samples: int | None = None
    warm_start: bool = False
    prefix_pool: int | None = None
    fine_tune_window: int | None = None
    seed: int = 0
    max_seconds: float | None = None

    def validate(self) -> None:
        if isinstance(self.fine_tune_lrs, (int, float)):
            raise ValueError(f"fine_tune_lrs must be a sequence of learning rates, "
                             f"got {self.fine_tune_lrs!r}")
        self.fine_tune_lrs = tuple(float(lr) for lr in self.fine_tune_lrs)
        for name, lr in [("init_lr", self.init_lr)] + [
                (f"fine_tune_lrs[{i}]", lr) for i, lr in enumerate(self.fine_tune_lrs)]:
            if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
                raise ValueError(f"{name} must be a finite learning rate > 0, got {lr!r}")
        check_range(self.layer_decay, "layer_decay", 0.0, 1.0, low_inclusive=False)
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.patience, "patience")
        check_positive_int(self.eval_every, "eval_every")
        check_positive_int(self.max_steps_per_stage, "max_steps_per_stage")
        if isinstance(self.max_steps_fine_tune, (list, tuple)):
            self.max_steps_fine_tune = tuple(self.max_steps_fine_tune)
            if len(self.max_steps_fine_tune) != len(self.fine_tune_lrs):
                raise ValueError(f"max_steps_fine_tune has {len(self.max_steps_fine_tune)} caps "
                                 f"but there are {len(self.fine_tune_lrs)} fine-tuning stages; "
                                 f"give one cap per entry of fine_tune_lrs, or a single int")
            for i, cap in enumerate(self.max_steps_fine_tune):
                check_positive_int(cap, f"max_steps_fine_tune[{i}]")
        elif self.max_steps_fine_tune is not None:
            check_positive_int(self.max_steps_fine_tune, "max_steps_fine_tune")
        if self.val_samples is not None:
            check_positive_int(self.val_samples, "val_samples")
        if self.prefix_pool is not None:
            check_positive_int(self.prefix_pool, "prefix_pool")
            if self.prefix_pool < self.batch_size:
                raise ValueError(f"prefix_pool ({self.prefix_pool}) must hold at least one "
                                 f"batch ({self.batch_size} samples)")
        if self.fine_tune_window is not None:
            check_positive_int(self.fine_tune_window, "fine_tune_window")
        check_positive_int(self.seed, "seed", allow_zero=True)
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds)
                                                 and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be a finite number of seconds > 0 or None, "
                             f"got {self.max_seconds!r}")

    @property
    def num_stages(self) -> int:
        """Stages per layer: A plus one per fine-tuning learning rate."""
        return 1 + len(self.fine_tune_lrs)

    def caches_prefix(self, stage: int) -> bool:
        """Whether the stage trains on a pool run once through its frozen layers: stage A,
        and the fine-tuning stages when they have a window (needs ``prefix_pool``)."""
        return self.prefix_pool is not None and (stage == 0 or self.fine_tune_window is not None)

    def max_steps(self, stage: int) -> int:
        """Step cap of stage ``stage`` (0 = A)."""
        if stage == 0 or self.max_steps_fine_tune is None:
            return self.max_steps_per_stage
        if isinstance(self.max_steps_fine_tune, tuple):
            return self.max_steps_fine_tune[stage - 1]
        return self.max_steps_fine_tune


#: Presets. Measured for LISTA-CPSS on the default problem (m=250, n=500, T=16), 2-core CPU.
#: "paper": the published schedule (patience 4000 steps, eval every 10, uncapped).
#: "quick": ~50 s per model (2140 steps; 1 torch thread, machine busy); val -43.6 dB at
#:     layer 16. Step caps rule; 4x the paper's learning rates and warm starts make up for it.
#: "cpu": the paper's learning rates, warm starts, caps 4000/3000/800 steps per stage, patience
#:     500, a pool of 32,768 samples through the frozen layers (``prefix_pool``) for stage A
#:     and for the fine-tuning stages, which train the last 3 layers (``fine_tune_window``):
#:     LISTA-CPSS 588 s (one thread), validation -55.9 / -56.6 dB at layer 16 for training
#:     seeds 0 / 1 (all layers fine-tuned: 1457 s on 2 threads, -57.8 dB; no pool: ~30 min).
BUDGETS: dict[str, StagedTrainingConfig] = {
    "paper": StagedTrainingConfig(),
    "quick": StagedTrainingConfig(init_lr=2e-3, fine_tune_lrs=(4e-4, 4e-5), patience=60,
                                  eval_every=20, max_steps_per_stage=80, max_steps_fine_tune=30,
                                  val_samples=250, warm_start=True),
    "cpu": StagedTrainingConfig(patience=500, eval_every=50, max_steps_per_stage=4000,
                                max_steps_fine_tune=(3000, 800), warm_start=True,
                                prefix_pool=32768, fine_tune_window=3),
    "gpu": StagedTrainingConfig(init_lr=1e-3, fine_tune_lrs=(2e-4, 2e-5), batch_size=512,
                                patience=300, eval_every=25, max_steps_per_stage=2000,
                                max_steps_fine_tune=(1000, 300), warm_start=True),
}

#: Solvers whose trainable parameters are only per-layer scalars (step sizes, thresholds)
#: train with larger learning rates: their presets are ``BUDGETS["scalar-<budget>"]``.
#: "scalar-quick" caps stages at 40/15/15 steps (1120 steps for T=16): quick in steps, not
#: only under a time cap (ALISTA's steps cost ~2.5x LISTA-CPSS's at batch 128).
SCALAR_SOLVERS = ("ALISTA",)
BUDGETS.update({
    "scalar-quick": StagedTrainingConfig(init_lr=1e-2, fine_tune_lrs=(2e-3, 2e-4),
                                         batch_size=128, patience=100, eval_every=20,
                                         max_steps_per_stage=40, max_steps_fine_tune=15,
                                         warm_start=True),
    # The recipe of the measured anchors (ALISTA 250x500: -71.6 dB at layer 16 in ~15 min on
    # 2 cores): 20x the paper's first-stage lr, step caps 1500/1000/800 that rule (patience
    # longer than a stage), best-validation restore at every stage end, the whole validation
    # set. Budget in steps: 16 x 3300 = 52,800 steps of batch 64. Stage A trains on a pool of
    # 16,384 samples run once through the frozen layers (966 s instead of 1301 s on the idle
    # 2-core CPU; validation -66.2 dB at layer 16, see docs/solvers.md).
    "scalar-cpu": StagedTrainingConfig(init_lr=1e-2, fine_tune_lrs=(2e-3, 2e-4),
                                       batch_size=64, patience=2000, eval_every=25,
                                       max_steps_per_stage=1500, max_steps_fine_tune=(1000, 800),
                                       warm_start=True, prefix_pool=16384),
    "scalar-gpu": StagedTrainingConfig(init_lr=1e-2, fine_tune_lrs=(2e-3, 2e-4),
                                       batch_size=1024, patience=300, eval_every=25,
                                       max_steps_per_stage=2000, max_steps_fine_tune=1000,
                                       warm_start=True),
})


def budget_for(solver: str, budget: str) -> StagedTrainingConfig:
    """The preset ``budget`` for solver ``solver``: ``scalar-<budget>`` for the solvers in
    :data:`SCALAR_SOLVERS` when it exists, else ``BUDGETS[budget]``."""
    if solver in SCALAR_SOLVERS and f"scalar-{budget}" in BUDGETS:
        return BUDGETS[f"scalar-{budget}"]
    if budget not in BUDGETS:
        raise ValueError(f"unknown training budget {budget!r}; choose one of {sorted(BUDGETS)}")
    return BUDGETS[budget]


def stage_name(stage: int) -> str:
    """"A" for the new-layer stage, then "B", "C", ... for the fine-tuning stages."""
    return chr(ord("A") + stage)


def stage_lr(config: StagedTrainingConfig, stage: int) -> float:
    """Base learning rate of stage ``stage`` (0 = A)."""
    if not 0 <= stage < config.num_stages:
        raise ValueError(f"stage must be in [0, {config.num_stages - 1}], got {stage!r}")
    return config.init_lr if stage == 0 else config.fine_tune_lrs[stage - 1]


def stage_param_groups(model: UnrolledSolver, layer: int, stage: int,
                       config: StagedTrainingConfig) -> list[dict[str, Any]]:
    """Adam parameter groups of (``layer``, ``stage``), each ``{"params", "lr", "layer"}``.

    Stage 0: only ``model.layer_parameters(layer)`` at ``init_lr``. Later stages: one group per
    layer i of :func:`trained_layers` at ``stage_lr * layer_decay ** (layer - i)`` (tied
    parameters are layer 1).
    """
    lr = stage_lr(config, stage)
    return [{"params": model.layer_parameters(i), "lr": lr * config.layer_decay ** (layer - i),
             "layer": i} for i in trained_layers(model, layer, stage, config)]


def trained_layers(model: UnrolledSolver, layer: int, stage: int,
                   config: StagedTrainingConfig) -> range:
    """The layers (1-based) that (``layer``, ``stage``) trains: ``layer`` in stage A; in the
    fine-tuning stages the last ``fine_tune_window`` layers, or all of them when the solver has
    tied parameters (``model.shared``: they act in every layer, so no prefix stays frozen)."""
    if stage == 0:
        return range(layer, layer + 1)
    window = layer if _tied(model) else (config.fine_tune_window or layer)
    return range(max(1, layer - window + 1), layer + 1)


def _tied(model: UnrolledSolver) -> bool:
    """Whether the solver has tied parameters (``model.shared``), used by every layer."""
    return len(model.shared) > 0


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StageRecord:
    """One finished stage. NMSEs in dB at layer ``layer`` on the validation set used for
    early stopping; ``curve`` holds (step, val NMSE) at every check; ``stopped`` is
    "patience", "max_steps", "time" or "diverged"."""

    layer: int
    stage: int
    stage_name: str
    lr: float
    steps: int
    best_step: int
    start_val_nmse_db: float
    best_val_nmse_db: float
    wall_s: float
    stopped: str
    curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageRecord:
        data = dict(data)
        data.pop("event", None)
        data["curve"] = [tuple(c) for c in data.get("curve", [])]
        return cls(**data)


@dataclasses.dataclass
class TrainingResult:
    """history: the finished stages in order; total_wall_s: training time over all sessions;
    val_nmse_db: final NMSE(dB) per layer on the full validation set; resumed_stages: stages
    loaded from a previous session."""

    history: list[StageRecord]
    total_wall_s: float
    val_nmse_db: list[float]
    resumed_stages: int = 0
    thresholds: list[float] = dataclasses.field(default_factory=list)

    @property
    def total_steps(self) -> int:
        """Training steps over all stages (the budget unit)."""
        return sum(r.steps for r in self.history)

    def to_dict(self) -> dict[str, Any]:
        return {"history": [r.to_dict() for r in self.history],
                "total_wall_s": self.total_wall_s, "val_nmse_db": self.val_nmse_db,
                "resumed_stages": self.resumed_stages, "thresholds": self.thresholds,
                "total_steps": self.total_steps}


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def warm_start_layer(model: UnrolledSolver, layer: int) -> list[str]:
    """Copy layer ``layer - 1``'s parameters into layer ``layer`` where the names and shapes
    match (``model.layers[t - 1]`` dicts); return the names copied."""
    if not 2 <= layer <= model.num_layers:
        raise ValueError(f"layer must be in [2, {model.num_layers}] to warm-start, got {layer!r}")
    previous, current = model.layers[layer - 2], model.layers[layer - 1]
    copied = []
    for name, param in current.items():
        if name in previous and previous[name].shape == param.shape:
            param.copy_(previous[name])
            copied.append(name)
    return copied


@torch.no_grad()
def evaluate_layers(model: UnrolledSolver, x: torch.Tensor, y: torch.Tensor,
                    num_layers: int | None = None, chunk: int = 2048) -> list[float]:
    """NMSE(dB) of layers 1..num_layers (default all) on (x* (N, n), y (N, m)), in chunks."""
    dev = model.A.device
    T = model.num_layers if num_layers is None else num_layers
    err = torch.zeros(T, dtype=torch.float64)
    for start in range(0, y.shape[0], chunk):
        xs = x[start:start + chunk].to(dev)
        outs = model(y[start:start + chunk].to(dev), num_layers=T)
        err += torch.stack([(o.double() - xs.double()).pow(2).sum() for o in outs]).cpu()
    ref = float(x.double().pow(2).sum())
    if ref == 0.0:
        raise ValueError("validation x* is all zeros; NMSE is undefined")
    return [10.0 * math.log10(max(float(e) / ref, 1e-30)) for e in err]


def check_prefix_pool(model: UnrolledSolver, config: StagedTrainingConfig) -> None:
    """``ValueError`` when ``config.prefix_pool`` is set for a solver whose layer reads more
    than x_{t-1} (:attr:`UnrolledSolver.markov` is False): its prefix cannot be cached."""
    if config.prefix_pool is not None and not model.markov:
        raise ValueError(f"prefix_pool caches x_(t-1), but a {model.name} layer also reads "
                         f"earlier state (momentum); set prefix_pool=None for this solver")


class _FreshBatches:
    """A stage's data: fresh samples through layers 1..t at every step (the published way)."""

    def __init__(self, model: UnrolledSolver, problem: SparseRecoveryProblem, layer: int,
                 config: StagedTrainingConfig, generator: torch.Generator,
                 val: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.model, self.problem, self.layer = model, problem, layer
        self.batch_size, self.generator, self.val = config.batch_size, generator, val

    def train_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x* (batch, n), layer t's output (batch, n)) of a fresh batch, with autograd."""
        x, y = self.problem.sample(self.batch_size, self.generator, device=self.model.A.device)
        return x, self.model(y, num_layers=self.layer)[-1]

    @torch.no_grad()
    def val_nmse(self) -> float:
        """Layer t's NMSE (dB) on the validation set."""
        x, y = self.val
        return nmse_db(self.model(y, num_layers=self.layer)[-1], x)


class _PrefixPool:
    """A stage's data with a frozen prefix (``config.prefix_pool``): a pool of samples and
    the validation set run once through the frozen layers 1..f-1; each step runs the trained
    layers f..t only (f: the first of :func:`trained_layers`)."""

    def __init__(self, model: UnrolledSolver, problem: SparseRecoveryProblem, layer: int,
                 config: StagedTrainingConfig, generator: torch.Generator,
                 val: tuple[torch.Tensor, torch.Tensor], first: int) -> None:
        check_prefix_pool(model, config)
        self.model, self.layer, self.first, self.generator = model, layer, first, generator
        self.batch_size = config.batch_size
        self.x, self.y = problem.sample(config.prefix_pool, generator, device=model.A.device)
        self.prev = self._prefix(self.y)
        self.x_val, self.y_val = val
        self.prev_val = self._prefix(self.y_val)
        self.order, self.cursor = torch.empty(0, dtype=torch.long), 0

    @torch.no_grad()
    def _prefix(self, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """x_{f-1} (N, n) of y (N, m): zeros for f = 1."""
        if self.first == 1:
            return y.new_zeros(y.shape[0], self.model.n)
        return torch.cat([self.model(y[i:i + chunk], num_layers=self.first - 1)[-1]
                          for i in range(0, y.shape[0], chunk)])

    def _trained(self, prev: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Layers f..t from x_{f-1}: x_t (N, n)."""
        for t in range(self.first, self.layer + 1):
            prev = self.model.step(t, prev, y)
        return prev

    def train_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x*, layer t's output) of the next pool batch (pool reshuffled each pass)."""
        if self.cursor + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.x), generator=self.generator)
            self.cursor = 0
        idx = self.order[self.cursor:self.cursor + self.batch_size].to(self.x.device)
        self.cursor += self.batch_size
        return self.x[idx], self._trained(self.prev[idx], self.y[idx])

    @torch.no_grad()
    def val_nmse(self) -> float:
        return nmse_db(self._trained(self.prev_val, self.y_val), self.x_val)


@contextlib.contextmanager
def _only_trainable(model: UnrolledSolver, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Freeze every parameter of ``model`` except ``params`` (so no wasted backward work)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    keep = {id(p) for p in params}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def train_stage(model: UnrolledSolver, problem: SparseRecoveryProblem, layer: int, stage: int,
                config: StagedTrainingConfig, generator: torch.Generator,
                val: tuple[torch.Tensor, torch.Tensor],
                on_eval: Callable[[int, float, float], None] | None = None,
                deadline: float | None = None) -> StageRecord:
    """Run one stage; return its record. The best-validation parameters are restored.

    val: (x*, y) on the model's device. on_eval(step, val_nmse_db, best_val_nmse_db) is called
    after each validation check. deadline: a ``time.perf_counter()`` value; the stage stops
    (after a final validation check) once it is passed.
    """
    start_time = time.perf_counter()
    groups = stage_param_groups(model, layer, stage, config)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.Adam(groups)
    cap = config.max_steps(stage)
    if config.caches_prefix(stage) and (stage == 0 or not _tied(model)):
        first = trained_layers(model, layer, stage, config).start
        data: _FreshBatches | _PrefixPool = _PrefixPool(model, problem, layer, config,
                                                        generator, val, first=first)
    else:
        data = _FreshBatches(model, problem, layer, config, generator, val)
    with _only_trainable(model, params):
        best = start = data.val_nmse()
        best_params = [p.detach().clone() for p in params]
        best_step, step, stopped = 0, 0, "max_steps"
        curve = [(0, start)]
        while step < cap:
            x, out = data.train_output()
            loss = torch.mean((out - x) ** 2)
            if not torch.isfinite(loss):
                log.warning("layer %d stage %s: non-finite loss at step %d; stopping the stage",
                            layer, stage_name(stage), step)
                stopped = "diverged"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            out_of_time = deadline is not None and time.perf_counter() >= deadline
            if step % config.eval_every and step < cap and not out_of_time:
                continue
            value = data.val_nmse()
            curve.append((step, value))
            if value < best:
                best, best_step = value, step
                for b, p in zip(best_params, params, strict=True):
                    b.copy_(p.detach())
            if on_eval is not None:
                on_eval(step, value, best)
            if step - best_step >= config.patience:
                stopped = "patience"
                break
            if out_of_time:
                stopped = "time"
                break
        with torch.no_grad():
            for b, p in zip(best_params, params, strict=True):
                p.copy_(b)
    return StageRecord(layer=layer, stage=stage, stage_name=stage_name(stage),
                       lr=stage_lr(config, stage), steps=step, best_step=best_step,
                       start_val_nmse_db=start, best_val_nmse_db=best,
                       wall_s=time.perf_counter() - start_time, stopped=stopped, curve=curve)


# --------------------------------------------------------------------------------------------
# Run folder state
# --------------------------------------------------------------------------------------------
def _normalised(data: Any) -> Any:
    return json.loads(json.dumps(data, sort_keys=True))


def _run_identity(model: UnrolledSolver, problem: SparseRecoveryProblem,
                  config: StagedTrainingConfig) -> dict[str, Any]:
    return _normalised({"training": config.to_dict(), "solver": model.config,
                        "problem": problem.config.to_dict()})


def _encode_state(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode("ascii")


def _decode_state(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _save_progress(run: RunDir, model: UnrolledSolver, completed: int, gen: torch.Generator,
                   history: list[StageRecord], elapsed: float, identity: dict[str, Any]) -> None:
    """Checkpoint the model, then atomically point train_state.json at it; drop older ones."""
    ck_dir = run.path / "checkpoints"
    name = f"stage-{completed:03d}"
    save_solver(model, ck_dir / name, meta={"completed_stages": completed})
    run.write_json(STATE_FILE, {"completed_stages": completed, "checkpoint": f"checkpoints/{name}",
                                "generator_state": _encode_state(gen), "elapsed_s": elapsed,
                                "history": [r.to_dict() for r in history], **identity})
    for old in ck_dir.iterdir():
        if not old.name.startswith(name + "."):
            old.unlink(missing_ok=True)


def _load_progress(run: RunDir, model: UnrolledSolver, gen: torch.Generator
                   ) -> tuple[int, list[StageRecord], float]:
    """Restore model parameters and generator from ``train_state.json``; (0, [], 0) if absent.

    The caller has claimed the folder (``RunDir.claim``), so the state is this experiment's."""
    if not run.file(STATE_FILE).is_file():
        return 0, [], 0.0
    state = run.read_json(STATE_FILE)
    tensors, _ = load_safetensors_checkpoint(run.path / state["checkpoint"], kind="solver")
    model.load_state_dict({k: v.to(model.A.device) for k, v in tensors.items()})
    gen.set_state(_decode_state(state["generator_state"]))
    history = [StageRecord.from_dict(r) for r in state["history"]]
    return int(state["completed_stages"]), history, float(state["elapsed_s"])


def _as_run(run_dir: str | Path | RunDir | None) -> RunDir | None:
    if run_dir is None or isinstance(run_dir, RunDir):
        return run_dir
    return RunDir(run_dir)


def _validation(problem: SparseRecoveryProblem, config: StagedTrainingConfig,
                dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = problem.validation_set()
    if config.val_samples is not None:
        x, y = x[:config.val_samples], y[:config.val_samples]
    return x.to(dev), y.to(dev)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
def train_staged(model: UnrolledSolver, problem: SparseRecoveryProblem,
                 config: StagedTrainingConfig | str | None = None, *,
                 run_dir: str | Path | RunDir | None = None,
                 device: str | torch.device = "auto", progress: bool | None = None,
                 resume: bool = True,
                 callback: Callable[[StageRecord], None] | None = None) -> TrainingResult:
    """Train ``model`` in place on ``problem`` with the staged schedule.

    Args:
        model: an unrolled solver built for ``problem.A`` (same (m, n)).
        config: a :class:`StagedTrainingConfig` or a preset name from :data:`BUDGETS`
            (default "paper").
        run_dir: folder for config, metrics, checkpoints (None: nothing is written).
        device: "auto", "cpu", "cuda[:i]"; the model is moved there.
        progress: show a progress bar (None: only on a TTY).
        resume: continue from ``run_dir``'s last finished stage if there is one; False starts
            over (the folder's old state is overwritten).
        callback: called with each finished stage's record, after its checkpoint is written.
    """
    config = _resolve_config(config)
    if not isinstance(model, UnrolledSolver):
        raise TypeError(f"model must be an UnrolledSolver, got {type(model).__name__}")
    if (model.m, model.n) != (problem.m, problem.n):
        raise ValueError(f"model is built for (m, n) = ({model.m}, {model.n}) but the problem "
                         f"has (m, n) = ({problem.m}, {problem.n})")
    check_prefix_pool(model, config)  # before the run folder is touched
    dev = resolve_device(device)
    model.to(dev)
    run = _as_run(run_dir)
    identity = _run_identity(model, problem, config)
    gen = make_generator(config.seed)
    completed, history, elapsed = 0, [], 0.0
    if run is not None:
        if not resume:   # start over: the folder's old run (state and config) is dropped
            run.file(STATE_FILE).unlink(missing_ok=True)
            run.file("config.json").unlink(missing_ok=True)
        # The one run-folder contract: a different experiment in this folder raises.
        run.claim(identity, may_differ=("training.max_seconds",), kind="staged training run")
        if resume:
            completed, history, elapsed = _load_progress(run, model, gen)
        run.write_text("metrics.jsonl", "".join(
            json.dumps({"event": "stage", **r.to_dict()}) + "\n" for r in history))
    resumed = completed
    plan = [(t, s) for t in range(1, model.num_layers + 1) for s in range(config.num_stages)]
    val = _validation(problem, config, dev)
    session_start = time.perf_counter()
    model.train()
    with progress_bar(progress) as bar:
        task = bar.add_task(model.name, total=len(plan), completed=completed, status="")
        for index in range(completed, len(plan)):
            layer, stage = plan[index]
            bar.update(task, description=f"{model.name} layer {layer}/{model.num_layers} "
                                         f"stage {stage_name(stage)}")

            def on_eval(step: int, value: float, best: float) -> None:
                bar.update(task, status=f"step {step} val {value:.2f} dB (best {best:.2f})")

            if stage == 0 and layer > 1 and config.warm_start:
                warm_start_layer(model, layer)
            record = train_stage(model, problem, layer, stage, config, gen, val, on_eval,
                                 _stage_deadline(config, elapsed, session_start,
                                                 len(plan) - index))
            history.append(record)
            log.info("%s layer %d stage %s: %d steps, val %.2f dB (%.1f s)", model.name, layer,
                     record.stage_name, record.steps, record.best_val_nmse_db, record.wall_s)
            if run is not None:
                run.log_metrics({"event": "stage", **record.to_dict()})
                _save_progress(run, model, index + 1, gen, history,
                               elapsed + time.perf_counter() - session_start, identity)
            bar.update(task, advance=1)
            if callback is not None:
                callback(record)
    model.eval()
    x_val, y_val = problem.validation_set()
    per_layer = evaluate_layers(model, x_val, y_val)
    total = elapsed + time.perf_counter() - session_start
    # Per-layer scalar thresholds: a stalled last layer shows here (true entries below
    # theta_T are zeroed, e.g. ALISTA needs theta_16 < ~0.015 on the default problem).
    thresholds = [float(layer["theta"].detach()) for layer in model.layers
                  if "theta" in layer and layer["theta"].numel() == 1]
    if run is not None:
        save_solver(model, run.path / "model",
                    meta={"val_nmse_db": per_layer, "train_seconds": total})
        run.log_metrics({"event": "final", "val_nmse_db": per_layer, "total_wall_s": total,
                         "thresholds": thresholds,
                         "total_steps": sum(r.steps for r in history)})
    return TrainingResult(history=history, total_wall_s=total, val_nmse_db=per_layer,
                          resumed_stages=resumed, thresholds=thresholds)


def _stage_deadline(config: StagedTrainingConfig, elapsed: float, session_start: float,
                    stages_left: int) -> float | None:
    """perf_counter() deadline of the next stage: an equal share of the time left."""
    if config.max_seconds is None:
        return None
    now = time.perf_counter()
    left = config.max_seconds - elapsed - (now - session_start)
    return now + max(left, 0.0) / max(stages_left, 1)


def _resolve_config(config: StagedTrainingConfig | str | None) -> StagedTrainingConfig:
    if config is None:
        return BUDGETS["paper"]
    if isinstance(config, str):
        if config not in BUDGETS:
            raise ValueError(f"unknown training budget {config!r}; choose one of "
                             f"{sorted(BUDGETS)} or pass a StagedTrainingConfig")
        return BUDGETS[config]
    if not isinstance(config, StagedTrainingConfig):
        raise TypeError(f"config must be a StagedTrainingConfig or a preset name, "
                        f"got {type(config).__name__}")
    return config
