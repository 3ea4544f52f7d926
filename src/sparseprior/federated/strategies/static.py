"""Static sparse baseline: a fixed random ERK mask, masked local training, sparse averaging."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sparseprior.federated.client import ClientUpdate
from sparseprior.federated.server import apply_masks, weighted_average
from sparseprior.federated.strategies.base import (
    STRATEGIES,
    ServerState,
    Strategy,
    random_erk_masks,
)
from sparseprior.sparsity import SPARSE_INITS


@STRATEGIES.register("static")
class StaticSparse(Strategy):
    """The initial random ERK mask never changes."""

    description = "fixed random ERK mask"
    sparse = True

    def init_state(self, model: nn.Module) -> ServerState:
        state = super().init_state(model)
        masks = random_erk_masks(model, self.config)
        # the init zeroes the masked weights itself
        return ServerState(0, SPARSE_INITS[self.config.sparse_init](state.weights, masks), masks)

    def budgets(self, state: ServerState) -> dict[str, int] | None:
        return {n: int(m.sum()) for n, m in (state.masks or {}).items()}

    def aggregate(self, state: ServerState, updates: Sequence[ClientUpdate]) -> ServerState:
        assert state.masks is not None
        average = weighted_average(updates, state.weights)
        return ServerState(state.round + 1, apply_masks(average, state.masks), state.masks)
