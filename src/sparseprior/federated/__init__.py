"""Federated dynamic sparse training (FedDST) and its baselines, for many small devices.

::

    from sparseprior.federated import FedRunConfig, run_federated
    summary = run_federated(FedRunConfig(strategy="feddst", clients=100, per_round=10,
                                         rounds=200, split="dirichlet:0.3"), "runs/fed/x")

Pure client/server functions (:mod:`.client`, :mod:`.server`), strategies registered in
:data:`STRATEGIES` (one file each), the wire format with counted bytes (:mod:`.comm`), seeded
splits (:mod:`.splits`), an embedded deterministic simulation engine (:mod:`.simulation`) and a
Flower ServerApp/ClientApp for real deployments (:mod:`.flower_app`, needs the ``fed`` extra).
"""

from sparseprior.federated.client import ClientPlan, ClientUpdate, client_update, readjust_masks
from sparseprior.federated.comm import DecodeError, decode, encode, message_bytes
from sparseprior.federated.config import FedRunConfig
from sparseprior.federated.federation import Federation
from sparseprior.federated.server import (
    check_update,
    layer_budgets,
    momentum_step,
    prune_to_budgets,
    weighted_average,
)
from sparseprior.federated.simulation import load_final, run_federated
from sparseprior.federated.splits import ClientSplit, make_split, parse_split
from sparseprior.federated.strategies import STRATEGIES, ServerState, Strategy

__all__ = [
    "STRATEGIES",
    "ClientPlan",
    "ClientSplit",
    "ClientUpdate",
    "DecodeError",
    "FedRunConfig",
    "Federation",
    "ServerState",
    "Strategy",
    "check_update",
    "client_update",
    "decode",
    "encode",
    "layer_budgets",
    "load_final",
    "make_split",
    "message_bytes",
    "momentum_step",
    "parse_split",
    "prune_to_budgets",
    "readjust_masks",
    "run_federated",
    "weighted_average",
]
