"""The strategy interface and registry: a strategy is one file with one registered class.

A strategy decides the initial global state (weights, masks), what each client does in a round
(:class:`~sparseprior.federated.client.ClientPlan`) and how the server folds the valid updates
into the next global state. Client training itself is shared
(:func:`~sparseprior.federated.client.client_update`), as are the server's pure functions
(:mod:`sparseprior.federated.server`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from sparseprior.common.registry import Registry
from sparseprior.federated.client import ClientPlan, ClientUpdate
from sparseprior.federated.server import layer_budgets
from sparseprior.sparsity import prunable_parameters, random_scores, select_masks

if TYPE_CHECKING:
    from sparseprior.federated.config import FedRunConfig

#: Client-training seed of round ``r`` for client ``k``: ``(local.seed * SEED_STRIDE + r) *
#: SEED_STRIDE + k`` (mod 2**31).
SEED_STRIDE = 1_000_003


@dataclasses.dataclass
class ServerState:
    """The global state after ``round`` completed rounds.

    Attributes:
        round: rounds completed (0 = initial).
        weights: the global ``state_dict`` (CPU).
        masks: name -> bool mask of the sparse layers (``None``: dense).
        extra: strategy state, e.g. the server momentum buffers (name -> tensor).
    """

    round: int
    weights: dict[str, Tensor]
    masks: dict[str, Tensor] | None = None
    extra: dict[str, Tensor] = dataclasses.field(default_factory=dict)


class Strategy:
    """Base class: dense FedAvg behaviour; subclasses override what differs."""

    #: one line for ``--help``
    description = ""
    #: clients train a mask (uploads carry masks, the server checks budgets)
    sparse = False

    def __init__(self, config: FedRunConfig) -> None:
        self.config = config

    # ----- the initial state
    def init_state(self, model: nn.Module) -> ServerState:
        """Round-0 state from a freshly initialised ``model``."""
        weights = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        return ServerState(0, weights)

    def budgets(self, state: ServerState) -> dict[str, int] | None:
        """Exact kept count per sparse layer a client mask must have (``None``: dense)."""
        return None

    # ----- a round
    def client_seed(self, round_index: int, client: int) -> int:
        base = int(self.config.local.seed)
        return ((base * SEED_STRIDE + round_index) * SEED_STRIDE + client) % 2**31

    def plan(self, round_index: int, client: int) -> ClientPlan:
        """What client ``client`` does in round ``round_index`` (0-based)."""
        return ClientPlan(round_index, self.client_seed(round_index, client))

    def aggregate(self, state: ServerState, updates: Sequence[ClientUpdate]) -> ServerState:
        """The next state from the valid ``updates`` (sorted by client id, at least one)."""
        raise NotImplementedError


STRATEGIES: Registry[type[Strategy]] = Registry("federated strategy")


def random_erk_masks(model: nn.Module, config: FedRunConfig) -> dict[str, Tensor]:
    """A uniformly random mask (seeded by ``config.seed``) keeping exactly the per-layer
    budgets of ``config.distribution`` at ``config.density`` in every prunable layer."""
    params = prunable_parameters(model, include_output=config.include_output)
    if not params:
        raise ValueError("the model has no prunable layers (conv/linear weights)")
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    budgets = layer_budgets(shapes, config.density, config.distribution)
    scores = random_scores(params, torch.Generator().manual_seed(int(config.seed) + 7919))
    return select_masks(scores, densities={n: budgets[n] / params[n].numel() for n in params})
