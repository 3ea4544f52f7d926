"""Dynamic sparse training as one :class:`~sparseprior.engine.Callback` on the one training loop.

Every method uses the same mechanism and differs only in its policy
(:mod:`sparseprior.dst.policies`: what it needs, how it drops and grows, its density schedule).

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

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sparseprior.dst.config import DSTConfig
from sparseprior.dst.policies import SEED_STRIDE, DSTPolicy
from sparseprior.dst.schedule import UpdateSchedule
from sparseprior.engine import Callback, is_distributed
from sparseprior.sparsity import (
    MaskSet,
    drop_and_grow,
    init_masked_,
    kept_counts,
    layer_densities,
    magnitude_scores,
    prunable_parameters,
    random_scores,
    select_masks,
)

if TYPE_CHECKING:
    from sparseprior.engine import Trainer

__all__ = ["SEED_STRIDE", "DynamicSparsity", "UpdateSchedule", "initial_masks", "target_counts"]


def target_counts(shapes: Mapping[str, tuple[int, ...]], density: float, distribution: str
                  ) -> dict[str, int]:
    """Weights each layer keeps at global ``density`` under ``distribution`` (exact ints)."""
    if density >= 1.0:
        return {n: math.prod(s) for n, s in shapes.items()}
    return kept_counts(shapes, layer_densities(shapes, density, distribution))


def initial_masks(model: nn.Module, config: DSTConfig) -> MaskSet | None:
    """The starting mask of ``config`` for ``model`` (``None`` for ``method='dense'``).

    A uniformly random mask (seeded by ``config.mask_seed``) keeping exactly
    :func:`target_counts` at ``config.start_density`` in each prunable layer (conv/linear
    weights, the output layer only with ``include_output``). The masked weights of ``model``
    are zeroed and the kept ones initialised by ``config.sparse_init``. Pass the result to
    ``Trainer(masks=...)``.
    """
    if not isinstance(config, DSTConfig):
        raise TypeError(f"config must be a DSTConfig, got {type(config).__name__}")
    if not config.policy.sparse:
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
    init_masked_(model, masks, config.sparse_init)
    return masks


class DynamicSparsity(Callback):
    """Dynamic sparse training with any registered method (its :class:`DSTPolicy`) as a
    callback.

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
        self.policy: DSTPolicy = config.policy
        self.schedule: UpdateSchedule | None = None
        self.updates: list[dict[str, Any]] = []
        self._grad_scores: dict[str, Tensor] | None = None
        self._grad_seconds = 0.0
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._fixed_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: Trainer) -> None:
        cfg = self.config
        if not self.policy.sparse:
            return
        if trainer.masks is None:
            raise ValueError(f"method={cfg.method!r} needs the Trainer to have masks; pass "
                             f"masks=initial_masks(model, config)")
        self.schedule = self.policy.update_schedule(trainer.total_steps)
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
        if self.schedule is None or not self.policy.dynamic or \
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
        return (self.schedule is not None and self.policy.dynamic
                and self.policy.needs_gradient and self.schedule.is_update_step(step))

    def _params(self, trainer: Trainer) -> dict[str, nn.Parameter]:
        params = dict(trainer.model.named_parameters())
        return {n: params[n] for n in self._shapes}

    def targets(self, step: int) -> dict[str, int]:
        """Active weights each layer must hold after the update at ``step``."""
        density = None if self.schedule is None else self.policy.target_density(
            step, self.schedule)
        if density is None:
            return dict(self._fixed_counts)
        return target_counts(self._shapes, density, self.config.distribution)

    @torch.no_grad()
    def _update(self, trainer: Trainer) -> dict[str, Any]:
        masks = trainer.masks
        assert masks is not None and self.schedule is not None
        step, cfg = trainer.step, self.config
        params = self._params(trainer)
        targets = self.targets(step)
        before = {n: int(masks[n].sum()) for n in self._shapes}
        if self.schedule.is_prune_step(step):
            # prune first (zeroes the pruned weights and their optimizer state), so a weight
            # regrown below starts at zero like any grown weight
            pruned = self._prune({n: p.detach() for n, p in params.items()},
                                 {n: masks[n] for n in self._shapes}, targets)
            masks.update_(_same_on_every_rank(pruned))
        current = {n: masks[n].clone() for n in self._shapes}
        fraction = self.schedule.drop_fraction(step, cfg.alpha)
        weights = {n: p.detach() for n, p in params.items()}
        grads = self._grad_scores if self.policy.needs_gradient else None
        grow = self.policy.grow_scores(weights, grads, step) if fraction > 0 else {}
        drop = self.policy.drop_scores(weights, grads, step) if fraction > 0 else None
        new = {}
        for n, mask in current.items():
            n_swap = int(round(fraction * int(mask.sum())))
            new[n] = drop_and_grow(weights[n], mask, None if drop is None else drop[n],
                                   grow[n], n_swap) if n_swap else mask
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
