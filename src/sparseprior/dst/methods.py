"""Dynamic sparse training as one :class:`~sparseprior.engine.Callback` on the one training loop.

Every method uses the same mechanism and differs only in its policy:

=========  ==================================  ============================================
method     drop (every update step)            grow
=========  ==================================  ============================================
static     nothing (fixed random mask)         nothing
set        smallest ``|w|`` among active       random inactive positions (seeded per step)
rigl       smallest ``|w|`` among active       largest dense ``|grad|`` among inactive
granet     cubic gradual magnitude pruning,    largest dense ``|grad|`` (neuroregeneration)
           then smallest ``|w|``
=========  ==================================  ============================================

Drop-and-grow goes through :func:`sparseprior.sparsity.drop_and_grow` (one routine for all);
masks change only through :meth:`MaskSet.update_`, which zeroes dropped and grown weights and
resets their optimizer state (so a grown weight starts at exactly zero with zero momentum).

Timing inside one optimizer step ``t -> t + 1`` (see :mod:`sparseprior.engine.callbacks`):
``after_backward`` copies the dense gradient magnitude (all-reduced under DDP, and *before* the
trainer masks gradients) but only when step ``t + 1`` is an update step; ``after_step`` then
drops by the magnitude of the updated weights and grows by that gradient. Under DDP the new
masks are computed identically on every rank and rank 0's are broadcast anyway, so the masks
(and their :meth:`MaskSet.digest`) are identical on all ranks after every update.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sparseprior.dst.config import DSTConfig
from sparseprior.engine import Callback, is_distributed
from sparseprior.sparsity import (
    MaskSet,
    cosine_drop_fraction,
    cubic_sparsity,
    drop_and_grow,
    kept_counts,
    layer_densities,
    magnitude_scores,
    prunable_parameters,
    random_scores,
    select_masks,
)

if TYPE_CHECKING:
    from sparseprior.engine import Trainer

#: Seed stream of SET's random growth at step ``t``: ``seed * SEED_STRIDE + t``.
SEED_STRIDE = 1_000_003


def target_counts(shapes: Mapping[str, tuple[int, ...]], density: float, distribution: str
                  ) -> dict[str, int]:
    """Weights each layer keeps at global ``density`` under ``distribution`` (exact ints)."""
    if density >= 1.0:
        return {n: math.prod(s) for n, s in shapes.items()}
    return kept_counts(shapes, layer_densities(shapes, density, distribution))


def initial_masks(model: nn.Module, config: DSTConfig) -> MaskSet | None:
    """The starting mask of ``config`` for ``model`` (``None`` for ``method='dense'``).

    A uniformly random mask (seeded by ``config.seed``) keeping exactly
    :func:`target_counts` at ``config.start_density`` in each prunable layer (conv/linear
    weights, the output layer only with ``include_output``). The masked weights of ``model``
    are zeroed. Pass the result to ``Trainer(masks=...)``.
    """
    if not isinstance(config, DSTConfig):
        raise TypeError(f"config must be a DSTConfig, got {type(config).__name__}")
    if config.method == "dense":
        return None
    params = prunable_parameters(model, include_output=config.include_output)
    if not params:
        raise ValueError("the model has no prunable layers (conv/linear weights)")
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    counts = target_counts(shapes, config.start_density, config.distribution)
    scores = random_scores(params, config.seed)
    chosen = select_masks(scores, densities={n: counts[n] / math.prod(shapes[n])
                                             for n in shapes})
    masks = MaskSet(chosen)
    masks.apply_(model)
    return masks


@dataclasses.dataclass(frozen=True)
class UpdateSchedule:
    """When masks change, in optimizer steps, for one training of ``total_steps`` steps.

    Attributes:
        total_steps: optimizer steps of the whole training.
        delta_t: steps between updates.
        end_step: ``T_end = floor(t_end * total_steps)``; drop-and-grow only at ``t < T_end``.
        prune_start, prune_updates: GraNet prunes at ``prune_start + k * delta_t`` for
            ``k = 1..prune_updates`` (0 updates for the other methods).
    """

    total_steps: int
    delta_t: int
    end_step: int
    prune_start: int = 0
    prune_updates: int = 0

    @classmethod
    def for_training(cls, config: DSTConfig, total_steps: int) -> UpdateSchedule:
        """The schedule of ``config`` over ``total_steps``; ``ValueError`` when no update fits."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        dt = config.delta_t
        end = int(math.floor(config.t_end * total_steps))
        if config.dynamic and dt >= end:
            raise ValueError(f"delta_t={dt} leaves no mask update before T_end = t_end x "
                             f"total steps = {config.t_end:g} x {total_steps} = {end}; use a "
                             f"smaller delta_t or train longer")
        if config.method != "granet":
            return cls(total_steps, dt, end)
        start = dt * int(config.prune_start * total_steps // dt)
        stop = int(math.floor(config.prune_end * total_steps))
        updates = (stop - start) // dt
        if updates < 1:
            raise ValueError(f"the GraNet pruning window [{config.prune_start:g}, "
                             f"{config.prune_end:g}] x {total_steps} steps holds no update "
                             f"every delta_t={dt} steps; widen it or lower delta_t")
        return cls(total_steps, dt, end, start, updates)

    def drop_fraction(self, step: int, alpha: float) -> float:
        """``alpha / 2 * (1 + cos(pi * t / T_end))``, 0 from ``T_end`` on."""
        return cosine_drop_fraction(step, alpha=alpha, end_step=self.end_step)

    def is_prune_step(self, step: int) -> bool:
        k, rest = divmod(step - self.prune_start, self.delta_t)
        return self.prune_updates > 0 and rest == 0 and 1 <= k <= self.prune_updates

    def is_update_step(self, step: int) -> bool:
        """True if the mask changes after optimizer step ``step`` (1-based)."""
        if step <= 0 or step % self.delta_t:
            return False
        return step < self.end_step or self.is_prune_step(step)

    def density(self, step: int, initial_density: float, final_density: float) -> float:
        """GraNet's global target density after ``step`` (cubic schedule)."""
        if self.prune_updates == 0:
            return final_density
        sparsity = cubic_sparsity(step, initial_sparsity=1.0 - initial_density,
                                  final_sparsity=1.0 - final_density,
                                  start_step=self.prune_start, n_updates=self.prune_updates,
                                  update_every=self.delta_t)
        return 1.0 - sparsity

    def update_steps(self) -> list[int]:
        """Every step after which the mask changes."""
        last = max(self.end_step, self.prune_start + self.prune_updates * self.delta_t)
        return [t for t in range(self.delta_t, last + 1, self.delta_t) if self.is_update_step(t)]


class DynamicSparsity(Callback):
    """Dynamic sparse training (``static``, ``set``, ``rigl``, ``granet``) as a callback.

    Use::

        dst = DynamicSparsity(DSTConfig(method="rigl", sparsity=0.9))
        masks = initial_masks(model, dst.config)
        Trainer(model, train_set, TrainConfig(...), masks=masks, callbacks=[dst]).fit()

    After each update a record is appended to :attr:`updates` (and to the run folder's
    ``metrics.jsonl`` as ``kind: "dst_update"``): step, drop fraction, target and mask density,
    per-layer active/target/dropped/grown counts, the mask digest and the update's seconds.
    """

    def __init__(self, config: DSTConfig) -> None:
        if not isinstance(config, DSTConfig):
            raise TypeError(f"config must be a DSTConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.schedule: UpdateSchedule | None = None
        self.updates: list[dict[str, Any]] = []
        self._grad_scores: dict[str, Tensor] | None = None
        self._grad_seconds = 0.0
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._fixed_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: Trainer) -> None:
        cfg = self.config
        if cfg.method == "dense":
            return
        if trainer.masks is None:
            raise ValueError(f"method={cfg.method!r} needs the Trainer to have masks; pass "
                             f"masks=initial_masks(model, config)")
        self.schedule = UpdateSchedule.for_training(cfg, trainer.total_steps)
        masks = trainer.masks
        self._shapes = dict(masks.shapes)
        self._fixed_counts = {n: int(m.sum()) for n, m in masks.items()}

    def after_backward(self, trainer: Trainer) -> None:
        if not self._needs_gradient(trainer.step + 1):
            return
        start = time.perf_counter()
        params = self._params(trainer)
        self._grad_scores = {
            n: p.grad.detach().abs().clone() if p.grad is not None else torch.zeros_like(p)
            for n, p in params.items()}
        self._grad_seconds = time.perf_counter() - start

    def after_step(self, trainer: Trainer) -> None:
        if self.schedule is None or not self.config.dynamic or \
                not self.schedule.is_update_step(trainer.step):
            return
        start = time.perf_counter()
        record = self._update(trainer)
        record["seconds"] = time.perf_counter() - start + self._grad_seconds
        self._grad_scores, self._grad_seconds = None, 0.0
        self.updates.append(record)
        if trainer.run_dir is not None:
            trainer.run_dir.log_metrics(record)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.masks is not None:
            trainer.log(mask_density=trainer.masks.density(), dst_updates=len(self.updates))

    def state_dict(self) -> dict[str, Any]:
        return {"updates": list(self.updates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = list(state.get("updates", []))

    # ------------------------------------------------------------------ the update

    def _needs_gradient(self, step: int) -> bool:
        return (self.schedule is not None and self.config.method in ("rigl", "granet")
                and self.schedule.is_update_step(step))

    def _params(self, trainer: Trainer) -> dict[str, nn.Parameter]:
        params = dict(trainer.model.named_parameters())
        return {n: params[n] for n in self._shapes}

    def targets(self, step: int) -> dict[str, int]:
        """Active weights each layer must hold after the update at ``step``."""
        if self.config.method != "granet" or self.schedule is None:
            return dict(self._fixed_counts)
        density = self.schedule.density(step, self.config.initial_density,
                                         self.config.density)
        return target_counts(self._shapes, density, self.config.distribution)

    def _grow_scores(self, step: int, weights: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        if self.config.method == "set":
            return random_scores(weights, self.config.seed * SEED_STRIDE + step)
        if self._grad_scores is None:
            raise RuntimeError("no gradient captured for this update step")
        return self._grad_scores

    @torch.no_grad()
    def _update(self, trainer: Trainer) -> dict[str, Any]:
        masks = trainer.masks
        assert masks is not None and self.schedule is not None
        step, cfg = trainer.step, self.config
        params = self._params(trainer)
        targets = self.targets(step)
        before = {n: int(masks[n].sum()) for n in self._shapes}
        if cfg.method == "granet" and self.schedule.is_prune_step(step):
            # prune first (zeroes the pruned weights and their optimizer state), so a weight
            # regrown below starts at zero like any grown weight
            pruned = self._prune({n: p.detach() for n, p in params.items()},
                                 {n: masks[n] for n in self._shapes}, targets)
            masks.update_(_same_on_every_rank(pruned))
        current = {n: masks[n].clone() for n in self._shapes}
        fraction = self.schedule.drop_fraction(step, cfg.alpha)
        weights = {n: p.detach() for n, p in params.items()}
        grow = self._grow_scores(step, weights) if fraction > 0 else {}
        new = {}
        for n, mask in current.items():
            n_swap = int(round(fraction * int(mask.sum())))
            new[n] = drop_and_grow(weights[n], mask, None, grow[n], n_swap) if n_swap else mask
        masks.update_(_same_on_every_rank(new))
        layers = {}
        for n, mask in current.items():
            now = masks[n]
            layers[n] = {"active": int(now.sum()), "target": targets[n],
                         "pruned": before[n] - int(mask.sum()),
                         "dropped": int((mask & ~now).sum()), "grown": int((now & ~mask).sum())}
        active = sum(v["active"] for v in layers.values())
        total = sum(math.prod(s) for s in self._shapes.values())
        return {"kind": "dst_update", "step": step, "method": cfg.method,
                "drop_fraction": fraction, "target_density": sum(targets.values()) / total,
                "density": active / total,
                "pruned": sum(v["pruned"] for v in layers.values()),
                "grown": sum(v["grown"] for v in layers.values()),
                "layers": layers, "digest": masks.digest()}

    @staticmethod
    def _prune(weights: Mapping[str, Tensor], current: Mapping[str, Tensor],
               targets: Mapping[str, int]) -> dict[str, Tensor]:
        """Keep the ``targets[n]`` largest ``|w|`` among the active weights of each layer."""
        keep = {n: min(targets[n], int(m.sum())) for n, m in current.items()}
        scores = magnitude_scores({n: weights[n] for n in current})
        return select_masks(scores, densities={n: keep[n] / m.numel()
                                               for n, m in current.items()},
                            active=dict(current))


def _same_on_every_rank(masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rank 0's masks on every rank (identity without a process group)."""
    if not is_distributed():
        return masks
    shared = MaskSet(masks).broadcast_(src=0)
    return {n: shared[n].to(m.device) for n, m in masks.items()}
