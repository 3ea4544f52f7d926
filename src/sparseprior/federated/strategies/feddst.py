"""FedDST (Bibikar et al., AAAI 2022): sparse clients that readjust their masks RigL-style.

Round ``r`` (0-based) is a readjustment round when ``readjust_every > 0``, ``(r + 1)`` is a
multiple of ``readjust_every`` and ``r < T_end = floor(readjust_end * rounds)``. In it, each
client drops ``alpha_r`` of every sparse layer's active weights (smallest ``|w|``) and grows as
many inactive ones (largest ``|grad|``, new weights at zero) after local epoch
``readjust_epoch``, with ``alpha_r = alpha / 2 * (1 + cos(pi * r / T_end))`` (applied once).
The server averages each weight over the clients that keep it (sample-weighted), then keeps, in
every layer, exactly its ERK budget of largest-magnitude weights among the union of the client
masks, so the global model is at the exact target sparsity after every round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sparseprior.federated.client import ClientPlan, ClientUpdate
from sparseprior.federated.server import (
    apply_masks,
    prune_to_budgets,
    union_masks,
    weighted_average,
)
from sparseprior.federated.strategies.base import STRATEGIES, ServerState
from sparseprior.federated.strategies.static import StaticSparse
from sparseprior.sparsity import cosine_drop_fraction


@STRATEGIES.register("feddst")
class FedDST(StaticSparse):
    """Sparse clients with periodic mask readjustment; server re-prunes to the budget."""

    description = "sparse, clients readjust masks, server re-prunes"
    readjusts = True

    @property
    def end_round(self) -> int:
        """``T_end``: no readjustment at rounds ``>= T_end``."""
        return max(1, int(math.floor(self.config.readjust_end * self.config.rounds)))

    def readjust_fraction(self, round_index: int) -> float:
        """``alpha_r`` of round ``round_index`` (0 when it is not a readjustment round)."""
        every = self.config.readjust_every
        if not self.readjusts or every == 0 or (round_index + 1) % every:
            return 0.0
        return cosine_drop_fraction(round_index, alpha=self.config.alpha,
                                    end_step=self.end_round)

    def plan(self, round_index: int, client: int) -> ClientPlan:
        return ClientPlan(round_index, self.client_seed(round_index, client),
                          self.readjust_fraction(round_index),
                          self.config.local_readjust_epoch)

    def aggregate(self, state: ServerState, updates: Sequence[ClientUpdate]) -> ServerState:
        assert state.masks is not None
        average = weighted_average(updates, state.weights)
        budgets = {n: int(m.sum()) for n, m in state.masks.items()}
        masks = prune_to_budgets(average, union_masks(updates), budgets)
        return ServerState(state.round + 1, apply_masks(average, masks), masks)


@STRATEGIES.register("feddst-noadj")
class FedDSTNoReadjust(FedDST):
    """FedDST with readjustment off (the ablation): the mask only changes through the server's
    re-pruning, which keeps it since every client holds the same mask."""

    description = "FedDST without mask readjustment"
    readjusts = False
