"""Unstructured magnitude pruning on the shared mask core: one-shot or gradual.

* One-shot: :func:`sparsify_` of :mod:`sparseprior.sparsity` (global or layer-wise ranking).
* Gradual: :class:`GradualPruning`, a :class:`~sparseprior.engine.Callback` that raises the
  sparsity along the cubic schedule of Zhu & Gupta (``sparseprior.sparsity.cubic_sparsity``)
  during fine-tuning; at each update it re-ranks the surviving weights by magnitude
  (``select_masks`` restricted to the active weights) and shrinks the trainer's
  :class:`~sparseprior.sparsity.MaskSet` with ``update_``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from torch import nn

from sparseprior.common.config import Config
from sparseprior.common.validation import check_choice, check_positive_int, check_range
from sparseprior.compress.steps import StepState, register_step
from sparseprior.engine import Callback, Trainer
from sparseprior.sparsity import (
    DISTRIBUTIONS,
    MaskSet,
    SparsityConfig,
    cubic_sparsity,
    layer_densities,
    layer_shapes,
    magnitude_scores,
    prunable_parameters,
    select_masks,
    sparsify_,
)

SCHEDULES = ("oneshot", "gradual")


@dataclasses.dataclass
class PruneConfig(Config):
    """Unstructured magnitude pruning.

    Attributes:
        sparsity: final fraction of prunable weights at zero, in ``[0, 1)``.
        scope: ``'global'`` (one ranking) or ``'layerwise'`` (per-layer counts by
            ``distribution``).
        distribution: ``'uniform'``, ``'er'`` or ``'erk'`` (layer-wise only).
        schedule: ``'oneshot'`` (prune now, then fine-tune) or ``'gradual'`` (cubic schedule
            during the step's fine-tuning; needs ``epochs > 0`` in the recipe step).
        n_updates: pruning updates of the gradual schedule (spread over the first 75% of
            fine-tuning steps).
        include_output: also prune the output layer.
    """

    sparsity: float = 0.9
    scope: str = "global"
    distribution: str = "uniform"
    schedule: str = "oneshot"
    n_updates: int = 10
    include_output: bool = False

    def validate(self) -> None:
        check_range(float(self.sparsity), "sparsity", 0.0, 1.0, high_inclusive=False)
        check_choice(self.scope, "scope", ("global", "layerwise"))
        check_choice(self.distribution, "distribution", DISTRIBUTIONS)
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_positive_int(self.n_updates, "n_updates")

    def sparsity_config(self, sparsity: float | None = None) -> SparsityConfig:
        return SparsityConfig(sparsity=self.sparsity if sparsity is None else sparsity,
                              scope=self.scope, distribution=self.distribution,
                              include_output=self.include_output)


def prune_(model: nn.Module, config: PruneConfig) -> MaskSet:
    """One-shot magnitude pruning to ``config.sparsity`` (weights zeroed in place)."""
    return sparsify_(model, config.sparsity_config())


def magnitude_masks(model: nn.Module, masks: MaskSet, sparsity: float, config: PruneConfig
                    ) -> dict[str, Any]:
    """Masks keeping the largest surviving weights at ``sparsity`` (names of ``masks``)."""
    params = prunable_parameters(model, names=masks.names)
    scores = magnitude_scores(params)
    density = 1.0 - sparsity
    if config.scope == "global":
        return select_masks(scores, density=density, scope="global", active=masks)
    densities = layer_densities(layer_shapes(params), density, config.distribution)
    return select_masks(scores, densities=densities, scope="layerwise", active=masks)


class GradualPruning(Callback):
    """Cubic gradual magnitude pruning during training (attach a dense :class:`MaskSet` to the
    trainer: ``Trainer(..., masks=MaskSet.dense(model, include_output=...))``).

    Updates happen every ``update_every`` steps from step 0 to ``n_updates * update_every``
    (75% of the run by default), so the last quarter fine-tunes at the final sparsity.
    """

    def __init__(self, config: PruneConfig, total_steps: int) -> None:
        self.config = config
        check_positive_int(total_steps, "total_steps")
        self.update_every = max(1, math.floor(0.75 * total_steps / config.n_updates))
        self.history: list[tuple[int, float]] = []

    def target(self, step: int) -> float:
        return cubic_sparsity(step, initial_sparsity=0.0, final_sparsity=self.config.sparsity,
                              start_step=0, n_updates=self.config.n_updates,
                              update_every=self.update_every)

    def _update(self, trainer: Trainer) -> None:
        if trainer.masks is None:
            raise ValueError("GradualPruning needs the Trainer to hold masks "
                             "(masks=MaskSet.dense(model))")
        sparsity = self.target(trainer.step)
        new = magnitude_masks(trainer.model, trainer.masks, sparsity, self.config)
        trainer.masks.update_(new)
        self.history.append((trainer.step, sparsity))

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.step == 0:
            self._update(trainer)

    def after_step(self, trainer: Trainer) -> None:
        step = trainer.step
        if step % self.update_every == 0 and step <= self.config.n_updates * self.update_every:
            self._update(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(s), float(v)) for s, v in state["history"]]


def _check_gradual(config: PruneConfig, epochs: int) -> None:
    if config.schedule == "gradual" and epochs == 0:
        raise ValueError("a gradual 'prune' step needs epochs >= 1 (it prunes while "
                         "fine-tuning)")


@register_step("prune", PruneConfig, summary="unstructured magnitude pruning (one-shot/gradual)",
               check=_check_gradual)
def prune_step(state: StepState, config: PruneConfig) -> dict[str, Any]:
    """One-shot: prune now. Gradual: attach dense masks now and prune while fine-tuning."""
    if config.schedule == "gradual":
        state.masks = MaskSet.dense(state.model, include_output=config.include_output)
        state.callbacks.append(lambda trainer: GradualPruning(config, trainer.total_steps))
    else:
        state.masks = prune_(state.model, config)
    state.pruned = True
    return {}
