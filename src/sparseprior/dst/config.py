"""Configs of dynamic sparse training: the method (:class:`DSTConfig`) and one experiment
(:class:`DSTRunConfig`: model + data + schedule + method)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from sparseprior.common.config import Config
from sparseprior.common.validation import check_choice, check_positive_int, check_range
from sparseprior.engine import TrainConfig
from sparseprior.engine.experiment import ModelDataConfig

#: ``dense`` (no mask), ``static`` (fixed random mask), ``set``, ``rigl``, ``granet``.
METHODS = ("dense", "static", "set", "rigl", "granet")
#: Methods that change the mask during training.
DYNAMIC_METHODS = ("set", "rigl", "granet")
#: Initial per-layer density rules (see :mod:`sparseprior.sparsity.density`).
DST_DISTRIBUTIONS = ("erk", "uniform", "er")


def _check_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclasses.dataclass
class DSTConfig(Config):
    """One dynamic-sparse-training method and its schedule.

    Steps are optimizer steps. A mask update happens after step ``t`` when ``t`` is a multiple
    of ``delta_t`` and ``t < t_end * total_steps``; it replaces a fraction
    ``alpha / 2 * (1 + cos(pi * t / T_end))`` of each layer's active weights (cosine decay).

    Attributes:
        method: ``'dense'`` (no mask, the reference), ``'static'`` (a fixed random mask with
            ``distribution`` densities), ``'set'`` (drop smallest ``|w|``, grow at random),
            ``'rigl'`` (drop smallest ``|w|``, grow where the dense ``|grad|`` is largest) or
            ``'granet'`` (gradual magnitude pruning from ``initial_density`` to the final
            density with the cubic schedule, each pruning step followed by neuroregeneration:
            drop smallest ``|w|`` and regrow by ``|grad|``).
        sparsity: final fraction of zeros among the prunable weights, in ``[0, 1)``.
        distribution: per-layer densities: ``'erk'`` (default), ``'uniform'`` or ``'er'``.
        delta_t: steps between mask updates (>= 1).
        t_end: fraction of the training steps after which the mask stops changing, in
            ``(0, 1]`` (default 0.75).
        alpha: initial drop (regrowth) fraction of the cosine schedule, in ``[0, 1]``.
        initial_density: GraNet's starting density ``d_i`` in ``[1 - sparsity, 1]``
            (1.0 = dense-to-sparse; default 0.5, sparse-to-sparse); other methods ignore it.
        prune_start, prune_end: GraNet's pruning window as fractions of the training steps;
            the density follows the cubic schedule from ``initial_density`` at ``prune_start``
            to ``1 - sparsity`` at the last update step ``<= prune_end``.
        include_output: also sparsify the output layer (default: kept dense).
        seed: seed of the initial random mask and of SET's random growth (step ``t`` draws
            from ``seed`` and ``t``, so every DDP rank draws the same).
    """

    method: str = "rigl"
    sparsity: float = 0.9
    distribution: str = "erk"
    delta_t: int = 100
    t_end: float = 0.75
    alpha: float = 0.3
    initial_density: float = 0.5
    prune_start: float = 0.0
    prune_end: float = 0.5
    include_output: bool = False
    seed: int = 0

    def validate(self) -> None:
        check_choice(self.method, "method", METHODS)
        sparsity = _check_number(self.sparsity, "sparsity")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (the fraction of zero weights; 1 "
                             f"would remove every weight), got {self.sparsity!r}")
        check_choice(self.distribution, "distribution", DST_DISTRIBUTIONS)
        if isinstance(self.delta_t, bool) or not isinstance(self.delta_t, int):
            raise ValueError(f"delta_t must be an integer number of steps >= 1, got "
                             f"{self.delta_t!r}")
        if self.delta_t <= 0:
            raise ValueError(f"delta_t must be >= 1 (steps between mask updates), got "
                             f"{self.delta_t}")
        t_end = _check_number(self.t_end, "t_end")
        if t_end > 1.0:
            raise ValueError(f"t_end={self.t_end!r} is beyond training: it is the fraction of "
                             f"the training steps after which updates stop, in (0, 1]")
        check_range(t_end, "t_end", 0.0, 1.0, low_inclusive=False)
        check_range(_check_number(self.alpha, "alpha"), "alpha", 0.0, 1.0)
        d_i = _check_number(self.initial_density, "initial_density")
        check_range(d_i, "initial_density", 0.0, 1.0, low_inclusive=False)
        if self.method == "granet" and not 1.0 - sparsity <= d_i <= 1.0:
            raise ValueError(f"initial_density must be in [1 - sparsity, 1] = "
                             f"[{1.0 - sparsity:g}, 1] (GraNet prunes down from it), got "
                             f"{self.initial_density!r}")
        start = _check_number(self.prune_start, "prune_start")
        end = _check_number(self.prune_end, "prune_end")
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"the GraNet pruning window needs 0 <= prune_start < prune_end "
                             f"<= 1 (fractions of training), got prune_start={start:g}, "
                             f"prune_end={end:g}")
        check_positive_int(self.seed, "seed", allow_zero=True)

    @property
    def density(self) -> float:
        """Final density ``1 - sparsity``."""
        return 1.0 - float(self.sparsity)

    @property
    def start_density(self) -> float:
        """Density of the mask training starts from (GraNet: ``initial_density``)."""
        if self.method == "dense":
            return 1.0
        return float(self.initial_density) if self.method == "granet" else self.density

    @property
    def dynamic(self) -> bool:
        return self.method in DYNAMIC_METHODS


def default_dst_train() -> TrainConfig:
    """The default schedule: SGD 0.05 with momentum 0.9, cosine decay, weight decay 1e-4,
    batch 128, 10 epochs, evaluation only at the end."""
    return TrainConfig(epochs=10, batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9,
                       weight_decay=1e-4, lr_schedule="cosine", eval_every=0, log_every=100)


@dataclasses.dataclass
class DSTRunConfig(ModelDataConfig):
    """One dynamic-sparse-training experiment: a model trained on a dataset with a method.

    Attributes:
        dst: the method (a :class:`DSTConfig` or its dict).
        model: a key of :data:`sparseprior.models.MODELS` (``lenet300``, ``lenet5``, ...).
        model_options: extra keywords of the model builder.
        dataset: a key of :data:`sparseprior.data.DATASETS`.
        dataset_options: dataset-specific options of :func:`~sparseprior.data.load_dataset`.
        data_root: dataset folder (``None``: the dataset's default).
        subset: keep this many training images (``None``: all).
        val_size: training images held out for validation.
        init_seed: seed of the weight initialisation and of the data subset.
        train: the schedule (a :class:`TrainConfig` or its dict).
    """

    dst: DSTConfig = dataclasses.field(default_factory=DSTConfig)
    init_seed: int = 0
    train: TrainConfig = dataclasses.field(default_factory=default_dst_train)

    def __post_init__(self) -> None:
        if isinstance(self.dst, dict):
            self.dst = DSTConfig.from_dict(self.dst)
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        super().__post_init__()

    def validate(self) -> None:
        if not isinstance(self.dst, DSTConfig):
            raise ValueError(f"dst must be a DSTConfig or its dict, got "
                             f"{type(self.dst).__name__}")
        self.dst.validate()
        super().validate()
        check_positive_int(self.init_seed, "init_seed", allow_zero=True)
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig or its dict, got "
                             f"{type(self.train).__name__}")
        self.train.validate()
