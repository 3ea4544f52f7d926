"""FedAvg (McMahan et al., 2017) and FedAvgM (Hsu et al., 2019): dense baselines."""

from __future__ import annotations

from collections.abc import Sequence

from sparseprior.federated.client import ClientUpdate
from sparseprior.federated.server import momentum_step, weighted_average
from sparseprior.federated.strategies.base import STRATEGIES, ServerState, Strategy


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    """Dense model; the server takes the sample-weighted average of the client models."""

    description = "dense, sample-weighted average"

    def aggregate(self, state: ServerState, updates: Sequence[ClientUpdate]) -> ServerState:
        return ServerState(state.round + 1, weighted_average(updates, state.weights))


@STRATEGIES.register("fedavgm")
class FedAvgM(Strategy):
    """Dense model with server momentum: ``v = beta v + (w - avg)``, ``w -= server_lr v``."""

    description = "dense, server momentum"

    def aggregate(self, state: ServerState, updates: Sequence[ClientUpdate]) -> ServerState:
        average = weighted_average(updates, state.weights)
        velocity = state.extra or None
        weights, velocity = momentum_step(state.weights, average, velocity,
                                          lr=self.config.server_lr,
                                          momentum=self.config.server_momentum)
        return ServerState(state.round + 1, weights, None, velocity)
