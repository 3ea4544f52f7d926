"""``TrainConfig``: every knob of the one training loop, validated, JSON round-trippable."""

from __future__ import annotations

import dataclasses

from sparseprior.common.config import Config
from sparseprior.common.validation import check_choice, check_positive_int, check_range

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass
class TrainConfig(Config):
    """Training hyper-parameters.

    Attributes:
        epochs: passes over the training set.
        batch_size: *global* batch size; under DDP each of the ``W`` ranks gets
            ``batch_size // W`` (must divide evenly), so results match a single process.
        optimizer: ``'sgd'``, ``'adam'`` or ``'adamw'``.
        lr: peak learning rate.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty (decoupled for AdamW).
        nesterov: Nesterov momentum (SGD; needs ``momentum > 0``).
        lr_schedule: ``'constant'``, ``'cosine'`` (to 0 at the last step) or ``'step'``
            (multiply by ``gamma`` at each of ``milestones``, given in epochs).
        milestones: epochs at which ``'step'`` decays the learning rate (increasing).
        gamma: decay factor of ``'step'``.
        warmup_epochs: linear warm-up length in epochs (may be fractional), before the schedule.
        seed: seeds Python/NumPy/torch at the start of ``fit`` and the data order
            (epoch ``e`` is shuffled with ``seed + e``, so resume is exact).
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` (or ``'cuda:i'``).
        eval_every: evaluate on the validation set every this many epochs (0: only at the end).
        max_steps: stop after this many optimizer steps in total (``None``: no limit).
        log_every: append a step record to ``metrics.jsonl`` every this many steps (0: never).
        num_threads: ``torch.set_num_threads`` value (``None``: leave as is).
        num_workers: DataLoader worker processes.
        eval_batch_size: batch size for evaluation (``None``: ``batch_size``).
        checkpoint_every: save a checkpoint every this many epochs when there is a run folder
            (0: only at the end).
        keep_checkpoints: how many checkpoints to keep in ``checkpoints/``.
        grad_clip_norm: clip the global gradient norm to this value (``None``: no clipping).
        drop_last: drop the last incomplete batch of each epoch.
        progress: show a progress bar (``None``: only when stderr is a terminal).
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: str = "constant"
    milestones: list[int] = dataclasses.field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    max_steps: int | None = None
    log_every: int = 50
    num_threads: int | None = None
    num_workers: int = 0
    eval_batch_size: int | None = None
    checkpoint_every: int = 1
    keep_checkpoints: int = 1
    grad_clip_norm: float | None = None
    drop_last: bool = False
    progress: bool | None = None

    def validate(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        check_range(float(self.lr), "lr", 0.0, None, low_inclusive=False)
        check_range(float(self.momentum), "momentum", 0.0, 1.0, high_inclusive=False)
        check_range(float(self.weight_decay), "weight_decay", 0.0, None)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError(f"nesterov=True needs optimizer='sgd' and momentum > 0, got "
                             f"optimizer={self.optimizer!r}, momentum={self.momentum}")
        check_choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        if not isinstance(self.milestones, (list, tuple)):
            raise ValueError(f"milestones must be a list of epochs, got {self.milestones!r}")
        for m in self.milestones:
            check_positive_int(m, "milestones[i]")
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be strictly increasing, got {self.milestones}")
        if self.lr_schedule == "step" and not self.milestones:
            raise ValueError("lr_schedule='step' needs milestones (epochs), e.g. [80, 120]")
        check_range(float(self.gamma), "gamma", 0.0, 1.0, low_inclusive=False)
        check_range(float(self.warmup_epochs), "warmup_epochs", 0.0, None)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        dev = str(self.device)
        if dev not in DEVICES and not dev.startswith("cuda:"):
            raise ValueError(f"device={self.device!r} is not one of {list(DEVICES)} "
                             f"(or 'cuda:<index>')")
        check_positive_int(self.eval_every, "eval_every", allow_zero=True)
        if self.max_steps is not None:
            check_positive_int(self.max_steps, "max_steps")
        check_positive_int(self.log_every, "log_every", allow_zero=True)
        if self.num_threads is not None:
            check_positive_int(self.num_threads, "num_threads")
        check_positive_int(self.num_workers, "num_workers", allow_zero=True)
        if self.eval_batch_size is not None:
            check_positive_int(self.eval_batch_size, "eval_batch_size")
        check_positive_int(self.checkpoint_every, "checkpoint_every", allow_zero=True)
        check_positive_int(self.keep_checkpoints, "keep_checkpoints")
        if self.grad_clip_norm is not None:
            check_range(float(self.grad_clip_norm), "grad_clip_norm", 0.0, None,
                        low_inclusive=False)
