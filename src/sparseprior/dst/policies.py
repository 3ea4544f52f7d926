"""DST policies: what each method needs and scores. The mechanism is shared.

Every method trains with the one :class:`~sparseprior.dst.DynamicSparsity` callback, which
updates masks through :func:`sparseprior.sparsity.drop_and_grow` and :meth:`MaskSet.update_`.
A *policy* says only what differs between methods:

=========  ======  =======  ====  ======================  ==================================
method     sparse  dynamic  grad  drop                    grow / density schedule
=========  ======  =======  ====  ======================  ==================================
dense      no      no       no    --                      --
static     yes     no       no    --                      -- (fixed random mask)
set        yes     yes      no    smallest ``|w|``        random (seeded by step)
rigl       yes     yes      yes   smallest ``|w|``        largest dense ``|grad|``
granet     yes     yes      yes   smallest ``|w|``        largest ``|grad|``; cubic density
                                                          from ``initial_density``
=========  ======  =======  ====  ======================  ==================================

A new method is one subclass and one registration line (no library edit)::

    from sparseprior.dst import DST_POLICIES, DSTPolicy

    @DST_POLICIES.register("mine")
    class Mine(DSTPolicy):
        help = "drop smallest |w|, grow where |w * grad| is largest"
        needs_gradient = True

        def grow_scores(self, weights, gradients, step):
            return {n: (w * gradients[n]).abs() for n, w in weights.items()}

    DSTConfig(method="mine")  # validates; `sparseprior dst train --method mine` works too
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from sparseprior.common.registry import Registry
from sparseprior.dst.schedule import UpdateSchedule
from sparseprior.sparsity import random_scores

if TYPE_CHECKING:
    from sparseprior.dst.config import DSTConfig

#: Seed stream of SET's random growth at step ``t``: ``seed * SEED_STRIDE + t``.
SEED_STRIDE = 1_000_003

Scores = Mapping[str, Tensor]


class DSTPolicy:
    """One dynamic-sparse-training method, bound to its :class:`DSTConfig`.

    Override what differs; the defaults are a sparse, dynamic method that drops the smallest
    ``|w|`` and keeps each layer's number of active weights (it must define
    :meth:`grow_scores`).

    Attributes:
        help: one line for the CLI help and ``sparseprior dst methods``.
        sparse: trains under a mask (``False``: the dense reference, no mask at all).
        dynamic: changes the mask during training (``False``: the starting mask is kept).
        needs_gradient: :meth:`grow_scores` / :meth:`drop_scores` read the dense gradient
            ``|grad|`` (captured before the trainer masks it, all-reduced under DDP), which is
            then copied only at update steps.
        config: the method's :class:`DSTConfig`.
    """

    help: ClassVar[str] = ""
    sparse: ClassVar[bool] = True
    dynamic: ClassVar[bool] = True
    needs_gradient: ClassVar[bool] = False

    def __init__(self, config: DSTConfig) -> None:
        self.config = config

    def validate(self) -> None:
        """Checks of ``config`` specific to this method (``ValueError`` naming the field)."""

    def start_density(self) -> float:
        """Global density of the mask training starts from."""
        return self.config.density if self.sparse else 1.0

    def target_sparsity(self) -> float:
        """The sparsity this method aims at (0 for dense), for summaries."""
        return float(self.config.sparsity) if self.sparse else 0.0

    def update_schedule(self, total_steps: int) -> UpdateSchedule:
        """When the mask changes over ``total_steps`` optimizer steps."""
        return UpdateSchedule.cosine(self.config, total_steps, dynamic=self.dynamic)

    def target_density(self, step: int, schedule: UpdateSchedule) -> float | None:
        """Global density the mask must have after the update at ``step`` (``None``: keep each
        layer's count of the starting mask). A lower value than the current density prunes
        the smallest ``|w|`` first."""
        return None

    def drop_scores(self, weights: Scores, gradients: Scores | None, step: int
                    ) -> Scores | None:
        """Per-layer scores of the active weights; the lowest are dropped (``None``:
        ``|w|``)."""
        return None

    def grow_scores(self, weights: Scores, gradients: Scores | None, step: int) -> Scores:
        """Per-layer scores of the inactive weights; the highest are grown. ``gradients`` is
        ``{name: |grad|}`` when :attr:`needs_gradient`, else ``None``."""
        raise NotImplementedError(f"{type(self).__name__} must define grow_scores()")


#: Every DST method, by the name given in ``DSTConfig.method`` / ``--method``.
DST_POLICIES: Registry[type[DSTPolicy]] = Registry("DST method")


def policy_for(config: DSTConfig) -> DSTPolicy:
    """The policy of ``config.method`` bound to ``config`` (``ValueError`` if unknown)."""
    return DST_POLICIES.get(config.method)(config)


def methods_help() -> str:
    """``"dense (...), static (...) or ..."`` for CLI help, from the registry."""
    return DST_POLICIES.help(lambda cls: cls.help)


@DST_POLICIES.register("dense")
class Dense(DSTPolicy):
    help = "no mask, the reference"
    sparse = False
    dynamic = False


@DST_POLICIES.register("static")
class Static(DSTPolicy):
    help = "a fixed random mask"
    dynamic = False


@DST_POLICIES.register("set")
class SET(DSTPolicy):
    help = "drop smallest |w|, grow at random"

    def grow_scores(self, weights: Scores, gradients: Scores | None, step: int) -> Scores:
        return random_scores(weights, self.config.seed * SEED_STRIDE + step)


def _gradients(gradients: Scores | None) -> Scores:
    if gradients is None:
        raise RuntimeError("no gradient captured for this update step")
    return gradients


@DST_POLICIES.register("rigl")
class RigL(DSTPolicy):
    help = "drop smallest |w|, grow largest dense |grad|"
    needs_gradient = True

    def grow_scores(self, weights: Scores, gradients: Scores | None, step: int) -> Scores:
        return _gradients(gradients)


@DST_POLICIES.register("granet")
class GraNet(RigL):
    help = "cubic gradual pruning from initial_density, then RigL's regrowth"

    def validate(self) -> None:
        cfg = self.config
        if not cfg.density <= cfg.initial_density <= 1.0:
            raise ValueError(f"initial_density must be in [1 - sparsity, 1] = "
                             f"[{cfg.density:g}, 1] (GraNet prunes down from it), got "
                             f"{cfg.initial_density!r}")

    def start_density(self) -> float:
        return float(self.config.initial_density)

    def update_schedule(self, total_steps: int) -> UpdateSchedule:
        return super().update_schedule(total_steps).with_pruning(self.config.prune_start,
                                                                 self.config.prune_end)

    def target_density(self, step: int, schedule: UpdateSchedule) -> float | None:
        return schedule.density(step, self.config.initial_density, self.config.density)
