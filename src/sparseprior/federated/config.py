"""``FedRunConfig``: one federated experiment (model, data split, strategy, schedule, faults)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from sparseprior.common.validation import check_choice, check_positive_int, check_range
from sparseprior.engine import TrainConfig
from sparseprior.sparsity import SPARSE_INITS
from sparseprior.workloads import ModelDataConfig

#: Wire formats of weight values (see :mod:`sparseprior.federated.comm`).
VALUE_DTYPES = ("fp32", "fp16")
#: Per-layer density rules of the sparse strategies.
FED_DISTRIBUTIONS = ("erk", "uniform", "er")


def default_local_train() -> TrainConfig:
    """Local training of one client: plain SGD 0.02 (no client momentum: with 0.05 and
    momentum 0.9 dense FedAvg collapsed to chance on 2-shard clients), weight decay 1e-4,
    batch 32, 2 epochs, constant learning rate, no evaluation, no logging."""
    return TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.02, momentum=0.0,
                       weight_decay=1e-4, lr_schedule="constant", eval_every=0, log_every=0,
                       checkpoint_every=0, progress=False, device="cpu")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclasses.dataclass
class FedRunConfig(ModelDataConfig):
    """A federated run: ``clients`` devices, ``per_round`` of them train each round.

    Attributes:
        strategy: a registered strategy: feddst, feddst-noadj, fedavg, fedavgm or static.
        clients: number of clients K.
        per_round: clients sampled (without replacement) per round, C <= K.
        rounds: communication rounds R.
        split: how the training set is divided: iid, dirichlet:BETA (BETA > 0) or shards:K
            (each client gets K label-sorted shards).
        sparsity: fraction of zero weights among the prunable weights (sparse strategies).
        distribution: per-layer densities of the sparse strategies: erk, uniform or er.
        include_output: also sparsify the output layer.
        sparse_init: initial weights of the sparse strategies: "rescaled" (each unit's kept
            weights scaled by sqrt(fan_in / kept fan_in), so masking does not shrink the
            signal; :mod:`sparseprior.sparsity.init`) or "unscaled" (the dense init, masked).
        alpha: initial fraction of each layer's active weights a client drops and regrows in a
            readjustment round (cosine-decayed to 0 at readjust_end).
        readjust_every: rounds between mask readjustments (FedDST; 0: never).
        readjust_end: fraction of the rounds after which masks no longer change, in (0, 1].
        readjust_epoch: local epoch after which a client readjusts its mask (0: before local
            training; default: one epoch before the end, so grown weights are trained).
        server_lr: server learning rate of fedavgm.
        server_momentum: server momentum of fedavgm, in [0, 1).
        value_dtype: wire format of weight values: fp32 or fp16.
        fail_rate: probability that a sampled client does not reply in a round.
        corrupt_rate: probability that a replying client sends a corrupted update (NaN, inf,
            wrong shape, wrong density or unknown mask), for fault tests.
        min_clients: valid replies needed to update the global model in a round.
        eval_every: evaluate the global model every this many rounds (and after the last).
        client_test: also evaluate on every client's own test split.
        seed: seeds the initial weights, the split, the initial mask, client sampling and
            faults.
        local: local training of each client (epochs, batch size, optimizer, ...); its seed is
            combined with the round and the client id.
        threads: torch.set_num_threads while running (None: leave as is).
    """

    #: Runs written before ``sparse_init`` existed started from the masked dense init.
    ADDED_FIELDS: ClassVar[dict[str, Any]] = {"sparse_init": "unscaled"}

    model: str = "lenet5"
    strategy: str = "feddst"
    clients: int = 100
    per_round: int = 10
    rounds: int = 200
    split: str = "shards:2"
    sparsity: float = 0.8
    distribution: str = "erk"
    include_output: bool = False
    sparse_init: str = "rescaled"
    alpha: float = 0.05
    readjust_every: int = 10
    readjust_end: float = 0.8
    readjust_epoch: int | None = None
    server_lr: float = 1.0
    server_momentum: float = 0.9
    value_dtype: str = "fp32"
    fail_rate: float = 0.0
    corrupt_rate: float = 0.0
    min_clients: int = 1
    eval_every: int = 10
    client_test: bool = True
    seed: int = 0
    local: TrainConfig = dataclasses.field(default_factory=default_local_train)
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.local, dict):
            self.local = TrainConfig.from_dict(self.local)
        super().__post_init__()

    def validate(self) -> None:
        from sparseprior.federated.splits import parse_split
        from sparseprior.federated.strategies import STRATEGIES

        super().validate()
        STRATEGIES.get(self.strategy)
        check_positive_int(self.clients, "clients")
        check_positive_int(self.per_round, "per_round")
        if self.per_round > self.clients:
            raise ValueError(f"per_round={self.per_round} is more clients per round than there "
                             f"are clients (clients={self.clients}); use per_round <= clients")
        check_positive_int(self.rounds, "rounds")
        parse_split(self.split)
        sparsity = _number(self.sparsity, "sparsity")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (fraction of zero weights), got "
                             f"{self.sparsity!r}")
        check_choice(self.distribution, "distribution", FED_DISTRIBUTIONS)
        check_choice(self.sparse_init, "sparse_init", tuple(SPARSE_INITS))
        check_range(_number(self.alpha, "alpha"), "alpha", 0.0, 1.0)
        check_positive_int(self.readjust_every, "readjust_every", allow_zero=True)
        check_range(_number(self.readjust_end, "readjust_end"), "readjust_end", 0.0, 1.0,
                    low_inclusive=False)
        if not isinstance(self.local, TrainConfig):
            raise ValueError(f"local must be a TrainConfig or its dict, got "
                             f"{type(self.local).__name__}")
        self.local.validate()
        if self.readjust_epoch is not None:
            check_positive_int(self.readjust_epoch, "readjust_epoch", allow_zero=True)
            if self.readjust_epoch > self.local.epochs:
                raise ValueError(f"readjust_epoch={self.readjust_epoch} is after the last local "
                                 f"epoch; allowed: 0..local.epochs={self.local.epochs}")
        check_range(_number(self.server_lr, "server_lr"), "server_lr", 0.0, None,
                    low_inclusive=False)
        check_range(_number(self.server_momentum, "server_momentum"), "server_momentum", 0.0,
                    1.0, high_inclusive=False)
        check_choice(self.value_dtype, "value_dtype", VALUE_DTYPES)
        check_range(_number(self.fail_rate, "fail_rate"), "fail_rate", 0.0, 1.0,
                    high_inclusive=False)
        check_range(_number(self.corrupt_rate, "corrupt_rate"), "corrupt_rate", 0.0, 1.0)
        check_positive_int(self.min_clients, "min_clients")
        if self.min_clients > self.per_round:
            raise ValueError(f"min_clients={self.min_clients} can never be reached with "
                             f"per_round={self.per_round}; use min_clients <= per_round")
        check_positive_int(self.eval_every, "eval_every")
        check_positive_int(self.seed, "seed", allow_zero=True)
        if self.threads is not None:
            check_positive_int(self.threads, "threads")

    @property
    def density(self) -> float:
        """``1 - sparsity``."""
        return 1.0 - float(self.sparsity)

    @property
    def local_readjust_epoch(self) -> int:
        """The local epoch after which clients readjust (``readjust_epoch`` or its default
        ``max(0, local.epochs - 1)``)."""
        if self.readjust_epoch is not None:
            return int(self.readjust_epoch)
        return max(0, self.local.epochs - 1)


#: Fields that may differ between a run and its continuation (machine settings).
MACHINE_FIELDS = ("threads", "local.device", "local.progress", "local.num_threads",
                  "local.num_workers", "local.eval_batch_size")
