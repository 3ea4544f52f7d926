"""Federated strategies, one module each, registered in :data:`STRATEGIES`."""

from sparseprior.federated.strategies import fedavg, feddst, static  # noqa: F401  (register)
from sparseprior.federated.strategies.base import (
    STRATEGIES,
    ServerState,
    Strategy,
    random_erk_masks,
)

__all__ = ["STRATEGIES", "ServerState", "Strategy", "random_erk_masks"]
