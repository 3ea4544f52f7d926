"""Shared sparse core: the one mask mechanism, layer densities, scores and schedules.

Public API::

    from sparseprior.sparsity import SparsityConfig, sparsify_
    masks = sparsify_(model, SparsityConfig(sparsity=0.9, distribution="erk"))
    masks.stats(model).sparsity          # counted from the weights
"""

from sparseprior.sparsity.density import (
    DISTRIBUTIONS,
    er_densities,
    erk_densities,
    kept_counts,
    layer_densities,
    uniform_densities,
)
from sparseprior.sparsity.init import (
    SPARSE_INITS,
    init_masked_,
    kept_fan_in_scale,
    rescale_to_kept_fan_in,
)
from sparseprior.sparsity.masks import (
    LayerSparsity,
    MaskSet,
    SparsityStats,
    output_layer_name,
    prunable_parameters,
    sparsity_stats,
    unwrap_model,
    zero_optimizer_state_,
)
from sparseprior.sparsity.schedules import (
    cosine_drop_fraction,
    cubic_sparsity,
    imp_density,
    imp_levels_for,
)
from sparseprior.sparsity.scores import (
    SCORE_FUNCTIONS,
    drop_and_grow,
    gradient_scores,
    layer_shapes,
    magnitude_scores,
    momentum_scores,
    random_scores,
    scores_for,
    select_masks,
)
from sparseprior.sparsity.sparsify import SparsityConfig, sparsify_

__all__ = [
    "DISTRIBUTIONS",
    "SCORE_FUNCTIONS",
    "SPARSE_INITS",
    "init_masked_",
    "LayerSparsity",
    "MaskSet",
    "SparsityConfig",
    "SparsityStats",
    "cosine_drop_fraction",
    "cubic_sparsity",
    "drop_and_grow",
    "er_densities",
    "erk_densities",
    "gradient_scores",
    "imp_density",
    "imp_levels_for",
    "kept_fan_in_scale",
    "kept_counts",
    "layer_densities",
    "layer_shapes",
    "magnitude_scores",
    "momentum_scores",
    "output_layer_name",
    "prunable_parameters",
    "random_scores",
    "rescale_to_kept_fan_in",
    "scores_for",
    "select_masks",
    "sparsify_",
    "sparsity_stats",
    "unwrap_model",
    "uniform_densities",
    "zero_optimizer_state_",
]
