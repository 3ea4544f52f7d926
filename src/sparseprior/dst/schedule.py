"""When masks change: :class:`UpdateSchedule`, in optimizer steps (pure arithmetic, no torch)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from sparseprior.sparsity import cosine_drop_fraction, cubic_sparsity

if TYPE_CHECKING:
    from sparseprior.dst.config import DSTConfig


@dataclasses.dataclass(frozen=True)
class UpdateSchedule:
    """When masks change, in optimizer steps, for one training of ``total_steps`` steps.

    Attributes:
        total_steps: optimizer steps of the whole training.
        delta_t: steps between updates.
        end_step: ``T_end = floor(t_end * total_steps)``; drop-and-grow only at ``t < T_end``.
        prune_start, prune_updates: gradual pruning (GraNet) at ``prune_start + k * delta_t``
            for ``k = 1..prune_updates`` (0 updates: no pruning window).
    """

    total_steps: int
    delta_t: int
    end_step: int
    prune_start: int = 0
    prune_updates: int = 0

    @classmethod
    def cosine(cls, config: DSTConfig, total_steps: int, *, dynamic: bool = True
               ) -> UpdateSchedule:
        """Drop-and-grow every ``delta_t`` steps until ``t_end``; ``ValueError`` when a
        ``dynamic`` method would get no update."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        dt = config.delta_t
        end = int(math.floor(config.t_end * total_steps))
        if dynamic and dt >= end:
            raise ValueError(f"delta_t={dt} leaves no mask update before T_end = t_end x "
                             f"total steps = {config.t_end:g} x {total_steps} = {end}; use a "
                             f"smaller delta_t or train longer")
        return cls(total_steps, dt, end)

    def with_pruning(self, prune_start: float, prune_end: float) -> UpdateSchedule:
        """This schedule plus a gradual-pruning window ``[prune_start, prune_end]`` (fractions
        of training); ``ValueError`` when no update fits in it."""
        dt, total = self.delta_t, self.total_steps
        start = dt * int(prune_start * total // dt)
        stop = int(math.floor(prune_end * total))
        updates = (stop - start) // dt
        if updates < 1:
            raise ValueError(f"the GraNet pruning window [{prune_start:g}, {prune_end:g}] x "
                             f"{total} steps holds no update every delta_t={dt} steps; widen "
                             f"it or lower delta_t")
        return dataclasses.replace(self, prune_start=start, prune_updates=updates)

    @classmethod
    def for_training(cls, config: DSTConfig, total_steps: int) -> UpdateSchedule:
        """The schedule of ``config``'s method (its policy) over ``total_steps``."""
        from sparseprior.dst.policies import policy_for

        return policy_for(config).update_schedule(total_steps)

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
        """The global target density after ``step`` on the cubic schedule (``final_density``
        without a pruning window)."""
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
