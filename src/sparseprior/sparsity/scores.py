"""Importance scores, the one mask-selection routine, and the one drop-and-grow routine.

Scores are ``name -> tensor`` of the weight's shape; larger = more important. Methods differ only
in which score they feed to :func:`select_masks` (one-shot / iterative pruning) or to
:func:`drop_and_grow` (dynamic sparse training: SET grows by a random score, RigL by gradient
magnitude, SNFS by momentum magnitude).

Ties are broken deterministically (stable sort: lower flat index wins), so identical inputs give
identical masks on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from sparseprior.common.seeding import make_generator
from sparseprior.common.validation import check_choice, check_positive_int, check_range

Scores = dict[str, Tensor]


def magnitude_scores(weights: Mapping[str, Tensor]) -> Scores:
    """``|w|`` per weight."""
    return {n: w.detach().abs() for n, w in weights.items()}


def gradient_scores(weights: Mapping[str, Tensor]) -> Scores:
    """``|dL/dw|`` per weight, from each parameter's ``.grad`` (``ValueError`` if missing)."""
    out = {}
    for n, w in weights.items():
        if w.grad is None:
            raise ValueError(f"parameter {n!r} has no .grad; run backward() before scoring "
                             f"by gradient")
        out[n] = w.grad.detach().abs()
    return out


def random_scores(
    weights: Mapping[str, Tensor], seed: int | torch.Generator | None = 0
) -> Scores:
    """Uniform ``[0, 1)`` scores drawn on CPU from ``seed`` (same on every device and rank)."""
    gen = make_generator(seed)
    return {n: torch.rand(w.shape, generator=gen).to(w.device) for n, w in weights.items()}


def momentum_scores(weights: Mapping[str, Tensor], optimizer: torch.optim.Optimizer) -> Scores:
    """``|momentum|`` per weight: SGD ``momentum_buffer`` or Adam ``exp_avg`` (zeros if none)."""
    out = {}
    for n, w in weights.items():
        state = optimizer.state.get(w, {})
        buf = state.get("momentum_buffer", state.get("exp_avg"))
        out[n] = buf.detach().abs() if isinstance(buf, Tensor) else torch.zeros_like(w)
    return out


SCORE_FUNCTIONS: dict[str, Callable[..., Scores]] = {
    "magnitude": magnitude_scores,
    "gradient": gradient_scores,
    "random": random_scores,
}


def _top_k_mask(score: Tensor, k: int) -> Tensor:
    """Bool mask (shape of ``score``) with ``True`` at the ``k`` largest entries (stable ties).

    Same result as a stable descending sort (among equal values the lower flat index wins),
    found in O(n) with the k-th largest value instead of a full sort.
    """
    flat = torch.nan_to_num(score.detach().flatten().float(), nan=float("-inf"))
    n = flat.numel()
    if k >= n:
        return torch.ones(score.shape, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return torch.zeros(score.shape, dtype=torch.bool, device=flat.device)
    kth = torch.kthvalue(flat.cpu(), n - k + 1).values.to(flat.device)
    mask = flat > kth
    need = k - int(mask.sum())
    if need > 0:
        mask[torch.nonzero(flat == kth).flatten()[:need]] = True
    return mask.view(score.shape)


def _restrict(scores: Mapping[str, Tensor], active: Mapping[str, Tensor] | None) -> Scores:
    if active is None:
        return dict(scores)
    return {n: torch.where(active[n].to(s.device), s.float(), torch.tensor(float("-inf"),
                                                                            device=s.device))
            for n, s in scores.items()}


def select_masks(
    scores: Mapping[str, Tensor],
    *,
    density: float | None = None,
    densities: Mapping[str, float] | None = None,
    scope: str = "layerwise",
    active: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Keep the highest-scoring weights.

    Args:
        scores: name -> score tensor (weight shape).
        density: global fraction to keep; for ``'layerwise'`` it means the same density per
            layer when ``densities`` is not given.
        densities: name -> per-layer density (``'layerwise'`` only).
        scope: ``'layerwise'`` keeps exactly ``round(d_l * numel_l)`` in each layer;
            ``'global'`` keeps exactly ``round(density * total)`` across all layers, ranked
            together.
        active: name -> bool mask of currently kept weights; if given, masked weights can never
            be selected unless the budget exceeds the active count (iterative pruning).

    Returns:
        name -> bool mask (``True`` = kept), on the scores' devices.
    """
    check_choice(scope, "scope", ("layerwise", "global"))
    ranked = _restrict(scores, active)
    if scope == "global":
        if density is None or densities is not None:
            raise ValueError("scope='global' needs density=... and no per-layer densities")
        check_range(float(density), "density", 0.0, 1.0)
        names = list(ranked)
        flat = torch.cat([ranked[n].detach().flatten().float().cpu() for n in names])
        keep = _top_k_mask(flat, int(round(density * flat.numel())))
        out, start = {}, 0
        for n in names:
            size = ranked[n].numel()
            out[n] = keep[start:start + size].view(ranked[n].shape).to(ranked[n].device)
            start += size
        return out
    if densities is None:
        if density is None:
            raise ValueError("scope='layerwise' needs densities=... or density=...")
        densities = {n: density for n in ranked}
    missing = [n for n in ranked if n not in densities]
    if missing:
        raise ValueError(f"densities has no entry for layer(s) {missing}")
    out = {}
    for n, s in ranked.items():
        check_range(float(densities[n]), f"densities[{n!r}]", 0.0, 1.0)
        out[n] = _top_k_mask(s, int(round(densities[n] * s.numel())))
    return out


def drop_and_grow(
    weights: Tensor,
    mask: Tensor,
    drop_score: Tensor | None,
    grow_score: Tensor,
    n_swap: int,
) -> Tensor:
    """The one dynamic-sparse-training update for one layer.

    Drops the ``n_swap`` active weights with the lowest ``drop_score`` (``|weights|`` when
    ``None``) and grows the ``n_swap`` inactive weights with the highest ``grow_score``; weights
    dropped in this same call are not eligible to grow. ``n_swap`` is clipped to
    ``min(active, inactive)`` so the number of ``True`` entries is preserved exactly.

    Args:
        weights: the layer's weight, any shape.
        mask: bool, same shape; ``True`` = active.
        drop_score, grow_score: same shape; higher = more important.
        n_swap: connections to replace (>= 0).

    Returns:
        The new bool mask (same shape and device as ``mask``). Apply it with
        :meth:`MaskSet.update_`, which zeroes dropped and grown weights and their optimizer state.
    """
    check_positive_int(n_swap, "n_swap", allow_zero=True)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    for name, t in (("weights", weights), ("grow_score", grow_score), ("drop_score", drop_score)):
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but mask has "
                             f"{tuple(mask.shape)}")
    if drop_score is None:
        drop_score = weights.detach().abs()
    n_active = int(mask.sum())
    n = min(n_swap, n_active, mask.numel() - n_active)
    if n == 0:
        return mask.clone()
    inf = torch.tensor(float("inf"), device=mask.device)
    drop_rank = torch.where(mask, drop_score.detach().float().to(mask.device), inf)
    new = mask.clone()
    new.view(-1)[_top_k_mask(-drop_rank, n).view(-1)] = False
    grow_rank = torch.where(~mask, grow_score.detach().float().to(mask.device), -inf)
    new.view(-1)[_top_k_mask(grow_rank, n).view(-1)] = True
    return new


def scores_for(
    name: str, weights: Mapping[str, Tensor], *, seed: int | torch.Generator | None = 0
) -> Scores:
    """Scores by name (``'magnitude'``, ``'gradient'`` or ``'random'``)."""
    check_choice(name, "score", SCORE_FUNCTIONS)
    if name == "random":
        return random_scores(weights, seed)
    return SCORE_FUNCTIONS[name](weights)


def layer_shapes(weights: Mapping[str, Tensor]) -> dict[str, Sequence[int]]:
    """name -> shape, for :mod:`sparseprior.sparsity.density`."""
    return {n: tuple(w.shape) for n, w in weights.items()}
