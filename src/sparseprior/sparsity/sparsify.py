"""``sparsify_(model, SparsityConfig(...))``: the one-verb public entry point (torchao style)."""

from __future__ import annotations

import dataclasses

from torch import nn

from sparseprior.common.config import Config
from sparseprior.common.validation import check_choice, check_range
from sparseprior.sparsity.density import DISTRIBUTIONS, layer_densities
from sparseprior.sparsity.masks import MaskSet, prunable_parameters
from sparseprior.sparsity.scores import layer_shapes, scores_for, select_masks

SCOPES = ("global", "layerwise")
SPARSIFY_SCORES = ("magnitude", "random")


@dataclasses.dataclass
class SparsityConfig(Config):
    """How to sparsify a model in one shot.

    Attributes:
        sparsity: fraction of prunable weights set to zero, in ``[0, 1)``.
        distribution: per-layer densities for ``scope='layerwise'``: ``'uniform'``, ``'er'``,
            ``'erk'`` (ignored for ``scope='global'``, where the ranking decides).
        scope: ``'layerwise'`` (exact per-layer counts) or ``'global'`` (one ranking over all).
        score: ``'magnitude'`` (``|w|``) or ``'random'`` (seeded).
        include_output: also prune the output layer.
        layers: explicit parameter or module names to prune (default: all conv/linear weights).
        dense_layers: names kept dense (their weights count towards the budget; layerwise only).
        seed: seed of the random score.
    """

    sparsity: float = 0.9
    distribution: str = "erk"
    scope: str = "layerwise"
    score: str = "magnitude"
    include_output: bool = False
    layers: list[str] | None = None
    dense_layers: list[str] = dataclasses.field(default_factory=list)
    seed: int = 0

    def validate(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ValueError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        check_range(float(self.sparsity), "sparsity", 0.0, 1.0, high_inclusive=False)
        check_choice(self.distribution, "distribution", DISTRIBUTIONS)
        check_choice(self.scope, "scope", SCOPES)
        check_choice(self.score, "score", SPARSIFY_SCORES)
        if self.scope == "global" and self.dense_layers:
            raise ValueError("dense_layers only works with scope='layerwise'; with "
                             "scope='global' leave those layers out of `layers` instead")

    @property
    def density(self) -> float:
        return 1.0 - float(self.sparsity)


def sparsify_(model: nn.Module, config: SparsityConfig | None = None) -> MaskSet:
    """Build masks for ``model`` from ``config`` and zero the pruned weights in place.

    Returns the :class:`MaskSet` (not attached to an optimizer: pass it to ``Trainer(masks=...)``
    or call ``masks.attach(model, optimizer)``). Counts come from
    ``masks.stats(model)``; each layer keeps exactly ``round(d_l * numel_l)`` weights
    (layer-wise) or ``round(density * total)`` over all layers (global).
    """
    config = config or SparsityConfig()
    if not isinstance(config, SparsityConfig):
        raise TypeError(f"config must be a SparsityConfig, got {type(config).__name__}")
    config.validate()
    params = prunable_parameters(model, include_output=config.include_output,
                                 names=config.layers)
    if not params:
        raise ValueError("the model has no prunable layers (conv/linear weights); pass "
                         "include_output=True or explicit layer names")
    scores = scores_for(config.score, params, seed=config.seed)
    if config.scope == "global":
        chosen = select_masks(scores, density=config.density, scope="global")
    else:
        dense = prunable_parameters(model, names=config.dense_layers) if config.dense_layers \
            else {}
        densities = layer_densities(layer_shapes(params), config.density, config.distribution,
                                    dense_layers=[n for n in dense if n in params])
        chosen = select_masks(scores, densities=densities, scope="layerwise")
    masks = MaskSet(chosen)
    masks.apply_(model)
    return masks
