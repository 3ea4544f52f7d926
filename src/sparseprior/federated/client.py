"""The client side: local training with the one :class:`~sparseprior.engine.Trainer`, masked,
and FedDST's mask readjustment (pure functions of the weights, masks and local data).

A readjustment drops, in every sparse layer, ``round(fraction * active)`` active weights with the
smallest magnitude and grows as many *inactive* ones with the largest dense gradient magnitude
(one batch: the client's first ``batch_size`` samples), through the one
:func:`~sparseprior.sparsity.drop_and_grow` routine; :meth:`MaskSet.update_` then sets the grown
weights to exactly zero (and their momentum), so the layer's number of kept weights never
changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from sparseprior.engine import Callback, TrainConfig, Trainer
from sparseprior.sparsity import MaskSet, drop_and_grow

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclasses.dataclass(frozen=True)
class ClientPlan:
    """What the server asks of a client in one round.

    Attributes:
        round: 0-based round index.
        seed: seed of the local training (data order, ...).
        readjust_fraction: fraction of each sparse layer's active weights to drop and regrow
            (0: no readjustment this round).
        readjust_epoch: local epoch after which to readjust (0: before local training).
    """

    round: int
    seed: int
    readjust_fraction: float = 0.0
    readjust_epoch: int = 0


@dataclasses.dataclass
class ClientUpdate:
    """A client's reply: its full ``state_dict`` (CPU), masks (``None`` for dense strategies),
    number of local training samples and local metrics."""

    client: int
    num_samples: int
    weights: dict[str, Tensor]
    masks: dict[str, Tensor] | None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


def readjust_masks(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                   grads: Mapping[str, Tensor], fraction: float) -> dict[str, Tensor]:
    """New masks: per layer drop ``round(fraction * active)`` smallest ``|w|`` among the active
    weights and grow as many largest ``|grad|`` among the inactive ones (same count)."""
    out = {}
    for name, mask in masks.items():
        n_swap = int(round(float(fraction) * int(mask.sum())))
        out[name] = drop_and_grow(weights[name].detach(), mask, None,
                                  grads[name].detach().abs(), n_swap)
    return out


def dense_gradients(model: nn.Module, inputs: Tensor, targets: Tensor, names: list[str],
                    loss_fn: LossFn = F.cross_entropy) -> dict[str, Tensor]:
    """``dL/dw`` of one batch for the parameters ``names`` (dense: masked positions too).

    The model's ``.grad`` fields are cleared afterwards.
    """
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    loss_fn(model(inputs), targets).backward()
    grads = {n: params[n].grad.detach().clone() for n in names}
    model.zero_grad(set_to_none=True)
    return grads


class MaskReadjust(Callback):
    """Readjust the trainer's masks once, after local epoch ``after_epoch`` (0: at the start).

    ``changes`` holds ``name -> {"dropped", "grown"}``; ``grown`` the grown positions.
    """

    def __init__(self, fraction: float, after_epoch: int, batch: tuple[Tensor, Tensor]) -> None:
        self.fraction = float(fraction)
        self.after_epoch = int(after_epoch)
        self.batch = batch
        self.changes: dict[str, dict[str, int]] = {}
        self.grown: dict[str, Tensor] = {}

    def on_train_start(self, trainer: Trainer) -> None:
        if self.after_epoch == 0:
            self._readjust(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.epoch + 1 == self.after_epoch:
            self._readjust(trainer)

    def _readjust(self, trainer: Trainer) -> None:
        masks = trainer.masks
        if masks is None:
            raise ValueError("mask readjustment needs a sparse client (masks)")
        x, y = (t.to(trainer.device) for t in self.batch)
        grads = dense_gradients(trainer.model, x, y, masks.names, trainer.loss_fn)
        params = dict(trainer.model.named_parameters())
        old = masks.state_dict()
        new = readjust_masks({n: params[n] for n in masks.names}, old, grads, self.fraction)
        self.changes = masks.update_(new)
        self.grown = {n: (~old[n] & new[n].cpu()) for n in new}


@contextlib.contextmanager
def _quiet_trainer() -> Iterator[None]:
    logger = logging.getLogger("sparseprior.engine.trainer")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def client_update(
    client: int,
    model: nn.Module,
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None,
    train_set: TensorDataset,
    local: TrainConfig,
    plan: ClientPlan,
) -> ClientUpdate:
    """Train the global model on one client's data and return its update.

    Args:
        client: the client id (echoed in the update).
        model: an instance of the architecture; its weights are overwritten with ``weights``.
        weights: the global ``state_dict`` the client received.
        masks: the global masks (``None``: dense training).
        train_set: the client's data ``(x (N, C, H, W), y (N,))``.
        local: local training schedule; its seed is replaced by ``plan.seed``.
        plan: round, seed and readjustment of this round.

    Returns:
        A :class:`ClientUpdate` with the trained ``state_dict`` (masked weights exactly zero
        off-mask), the final masks, ``num_samples = len(train_set)`` and metrics
        (``train_loss``, ``train_acc``, ``steps``, ``dropped``, ``grown``).
    """
    if len(train_set) == 0:
        raise ValueError(f"client {client} has no training samples")
    model.load_state_dict(dict(weights))
    mask_set = MaskSet(masks) if masks is not None else None
    callbacks: list[Callback] = []
    readjust = None
    if plan.readjust_fraction > 0:
        if mask_set is None:
            raise ValueError("readjust_fraction > 0 needs masks (a sparse strategy)")
        k = min(local.batch_size, len(train_set))
        readjust = MaskReadjust(plan.readjust_fraction, plan.readjust_epoch,
                                (train_set.tensors[0][:k], train_set.tensors[1][:k]))
        callbacks.append(readjust)
    config = local.replace(seed=int(plan.seed), progress=False, log_every=0, eval_every=0)
    with _quiet_trainer():
        trainer = Trainer(model, train_set, config, masks=mask_set, callbacks=callbacks)
        history = trainer.fit()
        if mask_set is not None:
            mask_set.detach()
    last = history[-1] if history else {}
    changes = readjust.changes if readjust is not None else {}
    metrics = {"train_loss": float(last.get("train_loss", float("nan"))),
               "train_acc": float(last.get("train_acc", float("nan"))),
               "steps": trainer.step,
               "dropped": sum(c["dropped"] for c in changes.values()),
               "grown": sum(c["grown"] for c in changes.values())}
    return ClientUpdate(
        client=int(client), num_samples=len(train_set),
        weights={k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        masks=mask_set.state_dict() if mask_set is not None else None, metrics=metrics)
