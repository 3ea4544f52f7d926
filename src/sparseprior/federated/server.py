"""The server side as pure functions: update checks, sample-weighted (sparse) averaging, the
new global mask re-pruned to the exact per-layer budget, server momentum.

Sparse averaging (FedDST): for a masked layer, weight ``j`` becomes
``sum_k n_k m_kj w_kj / sum_k n_k m_kj`` over the clients ``k`` whose mask keeps ``j``
(``n_k`` = samples), 0 where no client keeps it. Other tensors: ``sum_k n_k w_k / sum_k n_k``.
Sums run in float64 in the order of the updates (sorted by client id), so results are
deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from sparseprior.federated.client import ClientUpdate
from sparseprior.sparsity import kept_counts, layer_densities, magnitude_scores, select_masks

#: Reasons an update is rejected (never averaged in); counted per round.
REJECT_REASONS = ("nonfinite", "shape", "keys", "unknown_mask", "density", "samples",
                  "malformed")


def layer_budgets(shapes: Mapping[str, Sequence[int]], density: float, distribution: str
                  ) -> dict[str, int]:
    """Exact number of kept weights per layer at global ``density`` (``distribution``: erk,
    uniform or er; dense layers capped, see :func:`sparseprior.sparsity.layer_densities`)."""
    if density >= 1.0:
        return {n: math.prod(s) for n, s in shapes.items()}
    return kept_counts(shapes, layer_densities(shapes, density, distribution))


def check_update(update: ClientUpdate, template: Mapping[str, Tensor],
                 budgets: Mapping[str, int] | None) -> str | None:
    """Why ``update`` must be rejected (one of :data:`REJECT_REASONS`), or ``None`` if valid.

    Args:
        update: the decoded reply.
        template: the global ``state_dict`` (names and shapes expected).
        budgets: per sparse layer the exact number of kept weights its mask must have
            (``None``: a dense strategy, no masks allowed).
    """
    if isinstance(update.num_samples, bool) or not isinstance(update.num_samples, int) or \
            update.num_samples <= 0:
        return "samples"
    if set(update.weights) != set(template):
        return "keys"
    for name, t in template.items():
        w = update.weights[name]
        if tuple(w.shape) != tuple(t.shape):
            return "shape"
        if w.is_floating_point() and not bool(torch.isfinite(w).all()):
            return "nonfinite"
    masks = update.masks
    if budgets is None:
        return "unknown_mask" if masks else None
    if masks is None or set(masks) != set(budgets):
        return "unknown_mask"
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(template[name].shape):
            return "shape"
        if mask.dtype != torch.bool or int(mask.sum()) != int(budgets[name]):
            return "density"
        if bool((update.weights[name][~mask] != 0).any()):
            return "density"  # values outside the mask
    return None


def weighted_average(updates: Sequence[ClientUpdate], template: Mapping[str, Tensor]
                     ) -> dict[str, Tensor]:
    """Sample-weighted average of the updates; masked layers averaged over their holders only.

    Non-floating tensors (e.g. BatchNorm's ``num_batches_tracked``) take the first update's
    value. Returns tensors of the template's dtypes on CPU.
    """
    if not updates:
        raise ValueError("weighted_average needs at least one update")
    out: dict[str, Tensor] = {}
    for name, t in template.items():
        if not t.is_floating_point():
            out[name] = updates[0].weights[name].clone()
            continue
        num = torch.zeros(t.shape, dtype=torch.float64)
        if updates[0].masks is not None and name in updates[0].masks:
            den = torch.zeros(t.shape, dtype=torch.float64)
            for u in updates:
                m = u.masks[name].to(torch.float64) * u.num_samples
                num += m * u.weights[name].to(torch.float64)
                den += m
            avg = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
        else:
            total = sum(u.num_samples for u in updates)
            for u in updates:
                num += u.num_samples * u.weights[name].to(torch.float64)
            avg = num / total
        out[name] = avg.to(t.dtype)
    return out


def union_masks(updates: Sequence[ClientUpdate]) -> dict[str, Tensor]:
    """Per layer, the positions kept by at least one client."""
    names = list(updates[0].masks or {})
    return {n: torch.stack([u.masks[n] for u in updates]).any(dim=0) for n in names}


def prune_to_budgets(weights: Mapping[str, Tensor], candidates: Mapping[str, Tensor],
                     budgets: Mapping[str, int]) -> dict[str, Tensor]:
    """New masks keeping exactly ``budgets[n]`` weights per layer: the largest ``|w|`` among
    ``candidates`` (filled from the rest, lowest index first, only if too few candidates)."""
    scores = magnitude_scores({n: weights[n] for n in candidates})
    densities = {n: budgets[n] / weights[n].numel() for n in candidates}
    return select_masks(scores, densities=densities, active=candidates)


def apply_masks(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``weights`` with every masked-out weight set to exactly zero."""
    return {n: (w * masks[n].to(w.dtype) if n in masks else w.clone())
            for n, w in weights.items()}


def momentum_step(weights: Mapping[str, Tensor], average: Mapping[str, Tensor],
                  velocity: Mapping[str, Tensor] | None, *, lr: float, momentum: float
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """FedAvgM (Hsu et al., 2019): ``v = momentum * v + (w - avg)``; ``w = w - lr * v``.

    Returns ``(new weights, new velocity)``; non-floating tensors are copied from ``average``.
    With ``momentum = 0`` and ``lr = 1`` this is FedAvg.
    """
    new_w, new_v = {}, {}
    for name, w in weights.items():
        if not w.is_floating_point():
            new_w[name] = average[name].clone()
            continue
        delta = w.to(torch.float64) - average[name].to(torch.float64)
        v = delta if velocity is None else momentum * velocity[name].to(torch.float64) + delta
        new_v[name] = v.to(torch.float32)
        new_w[name] = (w.to(torch.float64) - lr * v).to(w.dtype)
    return new_w, new_v
