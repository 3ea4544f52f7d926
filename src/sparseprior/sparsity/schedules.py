"""Sparsity schedules: IMP levels, cubic gradual pruning, cosine drop fraction (pure functions)."""

from __future__ import annotations

import math

from sparseprior.common.validation import check_positive_int, check_range


def imp_density(level: int, rate: float = 0.2) -> float:
    """Density after ``level`` rounds of iterative magnitude pruning: ``(1 - rate) ** level``.

    ``rate`` is the fraction of the *remaining* weights pruned per round (0.2 in Frankle & Carbin).
    """
    check_positive_int(level, "level", allow_zero=True)
    check_range(float(rate), "rate", 0.0, 1.0, high_inclusive=False)
    return (1.0 - rate) ** level


def imp_levels_for(target_density: float, rate: float = 0.2) -> int:
    """Smallest number of IMP levels whose density is ``<= target_density``."""
    check_range(float(target_density), "target_density", 0.0, 1.0, low_inclusive=False)
    check_range(float(rate), "rate", 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    return max(0, math.ceil(math.log(target_density) / math.log(1.0 - rate) - 1e-12))


def cubic_sparsity(
    step: float,
    *,
    initial_sparsity: float,
    final_sparsity: float,
    start_step: int,
    n_updates: int,
    update_every: int,
) -> float:
    """Gradual pruning schedule of Zhu & Gupta (2017).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` for ``t0 <= t <= t0 + n*dt``;
    ``s_i`` before ``t0`` and ``s_f`` after. Callers prune at ``t = t0 + k * dt``, k = 0..n.

    Args:
        step: current step ``t`` (optimizer steps).
        initial_sparsity, final_sparsity: ``s_i`` and ``s_f`` in ``[0, 1)``.
        start_step: ``t0``.
        n_updates: ``n``, number of pruning updates (>= 1).
        update_every: ``dt``, steps between updates (>= 1).
    """
    check_range(float(initial_sparsity), "initial_sparsity", 0.0, 1.0, high_inclusive=False)
    check_range(float(final_sparsity), "final_sparsity", 0.0, 1.0, high_inclusive=False)
    check_positive_int(start_step, "start_step", allow_zero=True)
    check_positive_int(n_updates, "n_updates")
    check_positive_int(update_every, "update_every")
    span = n_updates * update_every
    progress = min(max((step - start_step) / span, 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


def cosine_drop_fraction(step: float, *, alpha: float, end_step: int) -> float:
    """Drop fraction for dynamic sparse training (RigL): ``alpha/2 * (1 + cos(pi * t / T_end))``.

    Zero at and after ``end_step`` (no more updates).
    """
    check_range(float(alpha), "alpha", 0.0, 1.0)
    check_positive_int(end_step, "end_step")
    if step >= end_step:
        return 0.0
    t = max(float(step), 0.0)
    return alpha / 2.0 * (1.0 + math.cos(math.pi * t / end_step))
