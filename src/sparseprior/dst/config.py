"""Configs of dynamic sparse training: the method (:class:`DSTConfig`) and one experiment
(:class:`DSTRunConfig`: model + data + schedule + method)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from sparseprior.common.config import Config
from sparseprior.common.validation import check_choice, check_positive_int, check_range
from sparseprior.dst.policies import DST_POLICIES, DSTPolicy, methods_help, policy_for
from sparseprior.engine import TrainConfig
from sparseprior.sparsity import SPARSE_INITS
from sparseprior.workloads import ModelDataConfig

#: Every registered DST method name (a live view of :data:`DST_POLICIES`: ``"rigl" in
#: METHODS``, ``tuple(METHODS)``); register new ones with ``DST_POLICIES.register``.
METHODS = DST_POLICIES
#: Initial per-layer density rules (see :mod:`sparseprior.sparsity.density`).
DST_DISTRIBUTIONS = ("erk", "uniform", "er")


def dynamic_methods() -> tuple[str, ...]:
    """The registered methods that change the mask during training."""
    return tuple(n for n, cls in DST_POLICIES.items() if cls.sparse and cls.dynamic)


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
        method: a registered DST method (:data:`sparseprior.dst.DST_POLICIES`; see
            ``sparseprior dst methods``).
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
        sparse_init: how the kept weights of the starting mask are initialised: ``'unscaled'``
            (the dense init, masked; default) or ``'rescaled'`` (each unit's kept weights
            scaled by ``sqrt(fan_in / kept fan_in)``, :mod:`sparseprior.sparsity.init`).
        mask_seed: seed of the initial random mask and of SET's random growth (step ``t``
            draws from ``mask_seed`` and ``t``, so every DDP rank draws the same); ``None``:
            the run's ``train.seed`` in a :class:`DSTRunConfig`, 0 alone.
    """

    #: Runs written before ``sparse_init`` existed used the masked dense init.
    ADDED_FIELDS: ClassVar[dict[str, Any]] = {"sparse_init": "unscaled"}

    method: str = dataclasses.field(
        default="rigl", metadata={"help": f"the DST method: {methods_help()}."})
    sparsity: float = 0.9
    distribution: str = "erk"
    delta_t: int = 100
    t_end: float = 0.75
    alpha: float = 0.3
    initial_density: float = 0.5
    prune_start: float = 0.0
    prune_end: float = 0.5
    include_output: bool = False
    sparse_init: str = "unscaled"
    mask_seed: int | None = None

    def validate(self) -> None:
        check_choice(self.method, "method", DST_POLICIES.names())
        sparsity = _check_number(self.sparsity, "sparsity")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (the fraction of zero weights; 1 "
                             f"would remove every weight), got {self.sparsity!r}")
        check_choice(self.distribution, "distribution", DST_DISTRIBUTIONS)
        check_choice(self.sparse_init, "sparse_init", tuple(SPARSE_INITS))
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
        start = _check_number(self.prune_start, "prune_start")
        end = _check_number(self.prune_end, "prune_end")
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"the GraNet pruning window needs 0 <= prune_start < prune_end "
                             f"<= 1 (fractions of training), got prune_start={start:g}, "
                             f"prune_end={end:g}")
        if self.mask_seed is not None:
            check_positive_int(self.mask_seed, "mask_seed", allow_zero=True)
        self.policy.validate()

    @property
    def policy(self) -> DSTPolicy:
        """The method's :class:`DSTPolicy`, bound to this config."""
        return policy_for(self)

    @property
    def seed(self) -> int:
        """``mask_seed`` as an int (0 when unset)."""
        return 0 if self.mask_seed is None else int(self.mask_seed)

    @property
    def density(self) -> float:
        """Final density ``1 - sparsity``."""
        return 1.0 - float(self.sparsity)

    @property
    def start_density(self) -> float:
        """Density of the mask training starts from (GraNet: ``initial_density``)."""
        return self.policy.start_density()

    @property
    def dynamic(self) -> bool:
        """The method changes the mask during training."""
        policy = self.policy
        return policy.sparse and policy.dynamic


def default_dst_train() -> TrainConfig:
    """The default schedule: SGD 0.05 with momentum 0.9, cosine decay, weight decay 1e-4,
    batch 128, 10 epochs, evaluation only at the end."""
    return TrainConfig(epochs=10, batch_size=128, optimizer="sgd", lr=0.05, momentum=0.9,
                       weight_decay=1e-4, lr_schedule="cosine", eval_every=0, log_every=100)


@dataclasses.dataclass
class DSTRunConfig(ModelDataConfig):
    """One dynamic-sparse-training experiment: a model trained on a dataset with a method.

    ``train.seed`` is the experiment's seed: ``init_seed`` and ``dst.mask_seed`` follow it
    unless set (they are filled in at construction, so ``config.json`` holds all three).

    Attributes:
        dst: the method (a :class:`DSTConfig`).
        model: a key of :data:`sparseprior.models.MODELS` (``lenet300``, ``lenet5``, ...).
        model_options: extra keywords of the model builder.
        dataset: a key of :data:`sparseprior.data.DATASETS`.
        dataset_options: dataset-specific options of :func:`~sparseprior.data.load_dataset`.
        data_root: dataset folder (``None``: the dataset's default).
        subset: keep this many training images (``None``: all).
        val_size: training images held out for validation.
        init_seed: seed of the weight initialisation and of the data subset (``None``:
            ``train.seed``).
        train: the schedule (a :class:`TrainConfig`).
    """

    dst: DSTConfig = dataclasses.field(default_factory=DSTConfig)
    init_seed: int | None = None
    train: TrainConfig = dataclasses.field(default_factory=default_dst_train)

    def __post_init__(self) -> None:
        if isinstance(self.train, TrainConfig) and isinstance(self.train.seed, int):
            if self.init_seed is None:
                self.init_seed = self.train.seed
            if isinstance(self.dst, DSTConfig) and self.dst.mask_seed is None:
                self.dst = self.dst.replace(mask_seed=self.train.seed)
        super().__post_init__()

    def validate(self) -> None:
        if not isinstance(self.dst, DSTConfig):
            raise ValueError(f"dst must be a DSTConfig, got {type(self.dst).__name__} "
                             f"(use DSTRunConfig.from_dict for dicts)")
        self.dst.validate()
        super().validate()
        if self.init_seed is not None:
            check_positive_int(self.init_seed, "init_seed", allow_zero=True)
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__} "
                             f"(use DSTRunConfig.from_dict for dicts)")
        self.train.validate()
