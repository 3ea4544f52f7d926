"""What both engines share: the data split, the model, the strategy and one round's logic.

A round (``run_round``): sample ``per_round`` clients without replacement (seeded by
``(seed, round)``), send each the encoded global model, collect the encoded replies through a
``reply`` function (in-process training, or Flower messages), decode and check them, count
every byte, and let the strategy aggregate the valid ones. With fewer than ``min_clients`` valid
replies the global model stays as it was (the round is counted as skipped).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from sparseprior.data import DatasetSplits
from sparseprior.engine.data import make_eval_loader
from sparseprior.federated.client import ClientPlan, ClientUpdate, client_update
from sparseprior.federated.comm import DecodeError, decode, encode
from sparseprior.federated.config import FedRunConfig
from sparseprior.federated.server import check_update
from sparseprior.federated.splits import ClientSplit, make_split
from sparseprior.federated.strategies import STRATEGIES, ServerState, Strategy
from sparseprior.models import build_model
from sparseprior.sparsity import sparsity_stats

log = logging.getLogger(__name__)

#: ``reply(client, download_blob, plan) -> upload blob`` or ``None`` (the client failed).
ReplyFn = Callable[[int, bytes, ClientPlan], "bytes | None"]
#: ``collect(clients, download_blob, plans) -> [upload blob or None per client]`` (all at once).
CollectFn = Callable[[list[int], bytes, list[ClientPlan]], "list[bytes | None]"]


def sequential(reply: ReplyFn) -> CollectFn:
    """A ``collect`` function that asks the clients one after another."""

    def collect(clients: list[int], blob: bytes, plans: list[ClientPlan]) -> list[bytes | None]:
        return [reply(k, blob, p) for k, p in zip(clients, plans, strict=True)]

    return collect


def build_seeded_model(config: FedRunConfig, input_shape: Sequence[int], num_classes: int
                       ) -> nn.Module:
    """``config.model`` initialised from ``config.seed`` without touching the global RNG."""
    c, h, w = input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        return build_model(config.model, in_channels=c, num_classes=num_classes,
                           input_size=(h, w), **config.model_options)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, batch_size: int = 1000) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (in order, eval mode)."""
    model.eval()
    loss = correct = n = 0.0
    for x, y in make_eval_loader(data, batch_size=batch_size):
        out = model(x)
        loss += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
        correct += float((out.argmax(1) == y).sum())
        n += len(y)
    model.train()
    return {"loss": loss / n if n else math.nan, "accuracy": correct / n if n else math.nan}


@dataclasses.dataclass
class RoundResult:
    """One round: the new state and its record (counts, bytes, faults)."""

    state: ServerState
    record: dict[str, Any]


class Federation:
    """Config + data + split + model + strategy, and the round logic both engines run.

    Args:
        config: the experiment.
        splits: the dataset if already loaded (default: ``config.load_splits(config.seed)``).
        split: the client split if already made (default: :func:`make_split`).
    """

    def __init__(self, config: FedRunConfig, splits: DatasetSplits | None = None,
                 split: ClientSplit | None = None) -> None:
        if not isinstance(config, FedRunConfig):
            raise TypeError(f"config must be a FedRunConfig, got {type(config).__name__}")
        self.config = config
        self.splits = splits if splits is not None else config.load_splits(config.seed)
        x, y = self.splits.train.tensors
        self.x_train, self.y_train = x, y
        if split is None:
            split = make_split(config.split, y.numpy(), self.splits.test.tensors[1].numpy(),
                               config.clients, config.seed)
        if split.clients != config.clients:
            raise ValueError(f"the split has {split.clients} clients, config.clients is "
                             f"{config.clients}")
        self.split = split
        self.model = build_seeded_model(config, self.splits.input_shape,
                                        self.splits.num_classes)
        self.strategy: Strategy = STRATEGIES.get(config.strategy)(config)
        self.max_numel = max(p.numel() for p in self.model.state_dict().values()) + 1

    # ------------------------------------------------------------------ data and state

    def client_data(self, client: int) -> TensorDataset:
        """Client ``client``'s training data (a copy of its rows)."""
        idx = torch.from_numpy(self.split.train[client])
        return TensorDataset(self.x_train[idx], self.y_train[idx])

    def client_test_data(self, client: int) -> TensorDataset:
        x, y = self.splits.test.tensors
        idx = torch.from_numpy(self.split.test[client])
        return TensorDataset(x[idx], y[idx])

    def initial_state(self) -> ServerState:
        return self.strategy.init_state(self.model)

    def sample(self, round_index: int) -> list[int]:
        """The clients of round ``round_index``: ``per_round`` distinct ids, sorted."""
        rng = np.random.default_rng([int(self.config.seed), int(round_index), 0x5a3])
        chosen = rng.choice(self.config.clients, size=self.config.per_round, replace=False)
        return sorted(int(c) for c in chosen)

    # ------------------------------------------------------------------ messages

    def download(self, state: ServerState) -> bytes:
        """The global model as sent to every sampled client (values + masks)."""
        return encode(state.weights, state.masks, value_dtype=self.config.value_dtype,
                      meta={"round": state.round})

    def upload(self, update: ClientUpdate, known_masks: dict[str, Tensor] | None) -> bytes:
        """A client's reply; masks equal to ``known_masks`` are not sent."""
        return encode(update.weights, update.masks, value_dtype=self.config.value_dtype,
                      known_masks=known_masks,
                      meta={"num_samples": update.num_samples, "client": update.client})

    def receive_global(self, blob: bytes) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """Client side: decode the downloaded global model."""
        weights, masks, _ = decode(blob, max_numel=self.max_numel)
        return weights, masks

    def train_client(self, client: int, blob: bytes, plan: ClientPlan
                     ) -> tuple[ClientUpdate, dict[str, Tensor] | None]:
        """Client side: decode the global model, train locally; returns the update and the
        masks the client received (known to the server)."""
        weights, masks = self.receive_global(blob)
        update = client_update(client, self.model, weights, masks, self.client_data(client),
                               self.config.local, plan)
        return update, masks

    def local_reply(self, client: int, blob: bytes, plan: ClientPlan) -> bytes:
        """Client side, in one call: train and encode the upload."""
        update, masks = self.train_client(client, blob, plan)
        return self.upload(update, masks)

    def accept(self, client: int, blob: bytes, state: ServerState
               ) -> tuple[ClientUpdate | None, str | None]:
        """Server side: decode and check one upload -> ``(update, None)`` or
        ``(None, reason)``."""
        try:
            weights, masks, meta = decode(blob, known_masks=state.masks,
                                          max_numel=self.max_numel)
        except DecodeError as err:
            return None, err.reason
        samples = meta.get("num_samples")
        update = ClientUpdate(client, samples if isinstance(samples, int) else -1, weights,
                              masks)
        reason = check_update(update, state.weights, self.strategy.budgets(state))
        return (None, reason) if reason else (update, None)

    # ------------------------------------------------------------------ a round

    def run_round(self, state: ServerState, reply: ReplyFn | None = None, *,
                  collect: CollectFn | None = None) -> RoundResult:
        """Round ``state.round`` (0-based): sample, send, collect, check, aggregate, count.

        Pass ``reply`` (clients asked one by one) or ``collect`` (all at once).
        """
        if (reply is None) == (collect is None):
            raise TypeError("run_round needs exactly one of reply= or collect=")
        collect = collect or sequential(reply)
        r = state.round
        clients = self.sample(r)
        down = self.download(state)
        valid: list[ClientUpdate] = []
        rejected: dict[str, int] = {}
        failed = 0
        up_bytes: list[int] = []
        plans = [self.strategy.plan(r, k) for k in clients]
        readjust = max(p.readjust_fraction for p in plans)
        blobs = collect(clients, down, plans)
        if len(blobs) != len(clients):
            raise ValueError(f"collect returned {len(blobs)} replies for {len(clients)} clients")
        for k, blob in zip(clients, blobs, strict=True):
            if blob is None:
                failed += 1
                continue
            up_bytes.append(len(blob))
            update, reason = self.accept(k, blob, state)
            if update is None:
                rejected[reason] = rejected.get(reason, 0) + 1
                log.warning("round %d: rejected the update of client %d (%s)", r + 1, k, reason)
            else:
                valid.append(update)
        skipped = len(valid) < self.config.min_clients
        if skipped:
            log.warning("round %d: %d valid replies < min_clients=%d; global model unchanged",
                        r + 1, len(valid), self.config.min_clients)
            new_state = dataclasses.replace(state, round=r + 1)
        else:
            new_state = self.strategy.aggregate(state, valid)
        record = {
            "round": r + 1, "clients": clients, "replied": len(up_bytes), "failed": failed,
            "rejected": rejected, "accepted": len(valid), "skipped": skipped,
            "readjust_fraction": readjust,
            "download_bytes": len(down) * len(clients), "upload_bytes": sum(up_bytes),
            "upload_bytes_per_client": (sum(up_bytes) / len(up_bytes)) if up_bytes else 0.0,
            "mask_changed": _masks_changed(state.masks, new_state.masks),
            **self.counted(new_state),
        }
        return RoundResult(new_state, record)

    # ------------------------------------------------------------------ measuring

    def counted(self, state: ServerState) -> dict[str, Any]:
        """Density of the sparse layers (or all prunable layers) counted from the weights."""
        names = list(state.masks) if state.masks else list(
            _prunable_names(self.model, self.config.include_output))
        stats = sparsity_stats({n: state.weights[n] for n in names})
        return {"nonzero": stats.nonzero, "total": stats.total, "density": stats.density,
                "sparsity": stats.sparsity,
                "mask_kept": sum(int(m.sum()) for m in state.masks.values())
                if state.masks else stats.total}

    def evaluate(self, state: ServerState) -> dict[str, float]:
        """Global test loss/accuracy; with ``client_test`` also the mean accuracy over the
        clients' own test splits."""
        self.model.load_state_dict(state.weights)
        test = evaluate(self.model, self.splits.test)
        out = {"test_loss": test["loss"], "test_acc": test["accuracy"]}
        if self.config.client_test:
            accs = [evaluate(self.model, self.client_test_data(k))["accuracy"]
                    for k in range(self.config.clients) if len(self.split.test[k])]
            out["client_test_acc"] = float(np.mean(accs)) if accs else math.nan
        return out


def _prunable_names(model: nn.Module, include_output: bool) -> list[str]:
    from sparseprior.sparsity import prunable_parameters

    return list(prunable_parameters(model, include_output=include_output))


def _masks_changed(old: dict[str, Tensor] | None, new: dict[str, Tensor] | None) -> bool:
    if old is None or new is None:
        return False
    return any(not torch.equal(old[n], new[n]) for n in old)
