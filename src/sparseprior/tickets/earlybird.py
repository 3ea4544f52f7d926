"""Early-Bird tickets (You et al., ICLR 2020): find a channel-pruned ticket early, then train it.

Method, as implemented here:

1. **Search.** Train the full network with an L1 penalty ``lambda * sum |gamma|`` on the BN
   scales (network slimming). After every epoch compute the channel mask at pruning ratio ``p``
   (global threshold on ``|gamma|`` over all prunable BN layers, or ``p`` per layer), push it into
   a FIFO of the last ``fifo_size`` masks and take the normalised Hamming distance between the
   newest mask and each earlier one. The ticket is *drawn* when the largest of these distances
   is below ``threshold`` (default 0.1).
2. **Slim.** Remove the pruned channels for real (:mod:`sparseprior.tickets.slimming`,
   Torch-Pruning's dependency graph): a smaller dense network with fewer parameters and FLOPs.
3. **Retrain** the slimmed network (from the ticket's weights, or re-initialised).

Coupled channels (e.g. a ResNet's residual stream: stem BN, every ``bn2`` of a stage and the
shortcut BN) form one group; a group's channel score is the largest ``|gamma|`` over its BN
layers, so a channel is removed only when it is small everywhere. ``coupled=False`` prunes only
independent BN layers (every BN of a VGG, ``bn1`` inside each ResNet block).

Public API::

    from sparseprior.tickets.earlybird import EarlyBirdConfig, run_earlybird, load_slimmed
    result = run_earlybird(EarlyBirdConfig(width=0.5, subset=10_000), "runs/eb")

Masks are ``{bn_name: bool tensor (C,)}`` (``True`` = keep).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sparseprior.common.config import Config
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_choice, check_positive_int, check_range
from sparseprior.engine.callbacks import Callback
from sparseprior.engine.config import LR_SCHEDULES, OPTIMIZERS, TrainConfig
from sparseprior.sparsity.structure import (
    ChannelGroup,
    ChannelMasks,
    apply_channel_masks_,
    channel_counts,
    channel_masks,
    find_channel_groups,
    group_names,
    group_scores,
    masked_model,
    masks_from_scores,
    slim_model,
)
from sparseprior.sparsity.structure import bn_layers as _bn_layers
from sparseprior.tickets.slimming import count_macs, count_params, load_slimmed, save_slimmed

if TYPE_CHECKING:
    from sparseprior.common.results import Section
    from sparseprior.engine.trainer import Trainer

log = logging.getLogger(__name__)

KIND = "Early-Bird experiment"
PRUNE_SCOPES = ("global", "layerwise")
RETRAIN_INITS = ("inherit", "reinit")

__all__ = [
    "ChannelGroup",
    "EarlyBirdCallback",
    "EarlyBirdConfig",
    "EarlyBirdDetector",
    "apply_channel_masks_",
    "bn_l1_penalty",
    "channel_masks",
    "check_earlybird_args",
    "default_earlybird_train",
    "count_macs",
    "count_params",
    "default_run_dir",
    "distance_matrix",
    "earlybird_section",
    "find_channel_groups",
    "group_scores",
    "hamming_distance",
    "load_slimmed",
    "mask_vector",
    "masked_model",
    "masks_from_scores",
    "plot_mask_distances",
    "result_rows",
    "run_earlybird",
    "save_slimmed",
    "section_config",
    "slim_model",
]


# --------------------------------------------------------------------------- argument checks


def check_earlybird_args(prune_ratio: float, threshold: float, fifo_size: int,
                         l1_lambda: float = 0.0) -> None:
    """``ValueError`` naming the argument unless ``0 < prune_ratio < 1``, ``0 < threshold <=
    1``, ``fifo_size >= 2`` (an int) and ``l1_lambda >= 0``."""
    if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, (int, float)) or \
            not 0.0 < float(prune_ratio) < 1.0:
        raise ValueError(f"prune_ratio must be in (0, 1) (fraction of channels to remove), "
                         f"got {prune_ratio!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold (mask distance) must be in (0, 1], got {threshold!r}")
    if isinstance(fifo_size, bool) or not isinstance(fifo_size, int) or fifo_size < 2:
        raise ValueError(f"fifo_size must be an int >= 2 (masks compared), got {fifo_size!r}")
    if isinstance(l1_lambda, bool) or not isinstance(l1_lambda, (int, float)) or \
            not float(l1_lambda) >= 0.0 or not math.isfinite(float(l1_lambda)):
        raise ValueError(f"l1_lambda must be a finite number >= 0, got {l1_lambda!r}")


# --------------------------------------------------------------------------- penalty, masks


def bn_l1_penalty(model: nn.Module, names: Sequence[str], l1_lambda: float) -> Tensor:
    """``l1_lambda * sum_l sum_c |gamma_{l,c}|`` over the BN layers ``names`` (a scalar tensor
    with a graph, to add to the loss)."""
    layers = _bn_layers(model, names)
    total = sum(bn.weight.abs().sum() for bn in layers)
    return torch.as_tensor(total) * float(l1_lambda)


def mask_vector(masks: Mapping[str, Tensor], groups: Sequence[ChannelGroup]) -> Tensor:
    """One bool vector of length ``sum_g C_g``: each group's mask once, in group order."""
    return torch.cat([masks[g.names[0]].detach().cpu().flatten().bool() for g in groups])


def hamming_distance(a: Tensor, b: Tensor) -> float:
    """Normalised Hamming distance: the fraction of positions where bool masks ``a``, ``b``
    (same shape, or dicts of them) differ, in [0, 1]."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        keys = sorted(a)
        if sorted(b) != keys:
            raise ValueError(f"mask dicts have different keys: {keys} vs {sorted(b)}")
        a = torch.cat([a[k].flatten() for k in keys])
        b = torch.cat([b[k].flatten() for k in keys])
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("masks are empty")
    return float((a.bool() != b.bool()).sum()) / a.numel()


def distance_matrix(vectors: Sequence[Tensor]) -> Tensor:
    """``(E, E)`` float tensor of pairwise :func:`hamming_distance` between ``E`` mask vectors."""
    if not vectors:
        return torch.zeros(0, 0)
    stack = torch.stack([v.flatten().bool() for v in vectors]).float()  # (E, N)
    diff = stack @ (1 - stack).T + (1 - stack) @ stack.T
    return diff / stack.shape[1]


# --------------------------------------------------------------------------- detection


class EarlyBirdDetector:
    """The FIFO test: drawn when the newest mask is within ``threshold`` of each of the
    ``fifo_size - 1`` previous ones (needs a full FIFO).

    >>> det = EarlyBirdDetector(fifo_size=2, threshold=0.1)
    >>> det.update(torch.tensor([True, False])), det.update(torch.tensor([True, False]))
    (None, 0.0)
    >>> det.drawn
    True
    """

    def __init__(self, fifo_size: int = 5, threshold: float = 0.1) -> None:
        check_earlybird_args(0.5, threshold, fifo_size)
        self.fifo_size, self.threshold = int(fifo_size), float(threshold)
        self.fifo: deque[Tensor] = deque(maxlen=self.fifo_size)
        self.drawn = False

    def update(self, mask: Tensor) -> float | None:
        """Push a bool mask vector; return the max distance to the earlier masks in the FIFO
        (``None`` until the FIFO is full) and set :attr:`drawn`."""
        mask = mask.detach().cpu().flatten().bool()
        self.fifo.append(mask)
        if len(self.fifo) < self.fifo_size:
            self.drawn = False
            return None
        dist = max(hamming_distance(mask, old) for old in list(self.fifo)[:-1])
        self.drawn = dist < self.threshold
        return dist

    def state_dict(self) -> dict[str, Any]:
        return {"fifo": list(self.fifo), "drawn": self.drawn}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fifo = deque((t.bool() for t in state["fifo"]), maxlen=self.fifo_size)
        self.drawn = bool(state["drawn"])


class EarlyBirdCallback(Callback):
    """Early-Bird search as a :class:`~sparseprior.engine.Callback`.

    ``extra_loss``: the L1 penalty on the BN scales. ``on_epoch_end``: mask at ``prune_ratio``,
    FIFO distance, ``trainer.log(eb_distance=..., eb_distance_prev=..., eb_drawn=...)``; when
    first drawn it records ``drawn_epoch`` (1-based), ``ticket_masks`` and (``keep_weights``)
    ``ticket_state`` (a CPU copy of the weights), and stops training if ``stop_when_drawn``.

    Attributes after ``fit``: ``groups``, ``mask_history`` (one bool vector per epoch),
    ``distances`` (max FIFO distance per epoch, ``None`` while the FIFO fills),
    ``prev_distances`` (distance to the previous epoch's mask), ``drawn_epoch``,
    ``ticket_masks``, ``last_masks``.
    """

    def __init__(self, prune_ratio: float = 0.5, *, l1_lambda: float = 1e-4,
                 threshold: float = 0.1, fifo_size: int = 5, scope: str = "global",
                 coupled: bool = True, min_channels: int = 1, stop_when_drawn: bool = True,
                 keep_weights: bool = True, groups: Sequence[ChannelGroup] | None = None
                 ) -> None:
        check_earlybird_args(prune_ratio, threshold, fifo_size, l1_lambda)
        check_choice(scope, "scope", PRUNE_SCOPES)
        self.prune_ratio, self.l1_lambda = float(prune_ratio), float(l1_lambda)
        self.scope, self.coupled = scope, bool(coupled)
        self.min_channels = check_positive_int(min_channels, "min_channels")
        self.stop_when_drawn, self.keep_weights = bool(stop_when_drawn), bool(keep_weights)
        self.detector = EarlyBirdDetector(fifo_size, threshold)
        self.groups: list[ChannelGroup] | None = list(groups) if groups is not None else None
        self.mask_history: list[Tensor] = []
        self.distances: list[float | None] = []
        self.prev_distances: list[float | None] = []
        self.drawn_epoch: int | None = None
        self.ticket_masks: ChannelMasks | None = None
        self.ticket_state: dict[str, Tensor] | None = None
        self.last_masks: ChannelMasks | None = None

    @property
    def drawn(self) -> bool:
        """True once a ticket has been drawn."""
        return self.drawn_epoch is not None

    def _names(self) -> list[str]:
        if self.groups is None:
            raise RuntimeError("EarlyBirdCallback has no groups yet; it finds them in "
                               "on_train_start (or pass groups=)")
        return group_names(self.groups)

    def on_train_start(self, trainer: Trainer) -> None:
        if self.groups is None:
            self.groups = find_channel_groups(trainer.model, coupled=self.coupled)

    def extra_loss(self, trainer: Trainer) -> Tensor | None:
        if self.l1_lambda == 0.0:
            return None
        return bn_l1_penalty(trainer.model, self._names(), self.l1_lambda)

    def current_masks(self, model: nn.Module) -> ChannelMasks:
        """The channel masks of ``model``'s current BN scales."""
        self._names()
        return channel_masks(model, self.groups, self.prune_ratio, scope=self.scope,
                             min_channels=self.min_channels)

    def on_epoch_end(self, trainer: Trainer) -> None:
        masks = self.current_masks(trainer.model)
        vec = mask_vector(masks, self.groups)
        prev = hamming_distance(vec, self.mask_history[-1]) if self.mask_history else None
        dist = self.detector.update(vec)
        self.mask_history.append(vec)
        self.distances.append(dist)
        self.prev_distances.append(prev)
        self.last_masks = masks
        epoch = trainer.epoch + 1
        if self.detector.drawn and self.drawn_epoch is None:
            self.drawn_epoch = epoch
            self.ticket_masks = {k: v.clone() for k, v in masks.items()}
            if self.keep_weights:
                self.ticket_state = {k: v.detach().cpu().clone()
                                     for k, v in trainer.model.state_dict().items()}
            log.info("Early-Bird ticket drawn at epoch %d (max mask distance %.4f)", epoch, dist)
            if self.stop_when_drawn:
                trainer.should_stop = True
        trainer.log(eb_distance=dist, eb_distance_prev=prev, eb_drawn=self.drawn,
                    eb_kept_fraction=float(vec.float().mean()))

    def state_dict(self) -> dict[str, Any]:
        return {"detector": self.detector.state_dict(), "mask_history": list(self.mask_history),
                "distances": list(self.distances), "prev_distances": list(self.prev_distances),
                "drawn_epoch": self.drawn_epoch, "ticket_masks": self.ticket_masks,
                "ticket_state": self.ticket_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.detector.load_state_dict(state["detector"])
        self.mask_history = [t.bool() for t in state["mask_history"]]
        self.distances = list(state["distances"])
        self.prev_distances = list(state["prev_distances"])
        self.drawn_epoch = state["drawn_epoch"]
        tm = state["ticket_masks"]
        self.ticket_masks = {k: v.bool() for k, v in tm.items()} if tm is not None else None
        self.ticket_state = dict(state["ticket_state"]) if state["ticket_state"] else None


# --------------------------------------------------------------------------- config


def default_earlybird_train() -> TrainConfig:
    """The schedule of every Early-Bird phase: SGD 0.02 with momentum 0.9, weight decay 1e-4,
    batch 128, 16 epochs (the full baseline's budget), cosine decay for retraining and the
    baseline; no step logging, evaluation only at the end."""
    return TrainConfig(epochs=16, batch_size=128, optimizer="sgd", lr=0.02, momentum=0.9,
                       weight_decay=1e-4, lr_schedule="cosine", eval_every=0, log_every=0,
                       eval_batch_size=500)


@dataclasses.dataclass
class EarlyBirdConfig(Config):
    """One Early-Bird experiment: search, slim, retrain; plus the full-network baseline.

    The defaults are the benchmark's (``benchmarks/earlybird.py``, about 12 minutes on 2 CPU
    cores): vgg-small at width 0.5 on 15k Fashion-MNIST images, 16 epochs in all.

    Attributes:
        model: a :func:`sparseprior.models.build_model` name with BN layers (``vgg-small``,
            ``vgg11``, ``vgg16``, ``resnet20``, ...).
        width: channel multiplier of the model (VGG/ResNet only).
        dataset: a :func:`sparseprior.data.load_dataset` name; ``data_root`` its folder.
        subset: training images kept (``None``: all); ``val_size``: images carved for val.
        prune_ratio: fraction of prunable channels removed, in (0, 1).
        prune_scope: ``"global"`` (one |gamma| threshold) or ``"layerwise"`` (p per layer).
        coupled: also prune coupled channels (ResNet residual streams) as groups.
        min_channels: channels every layer keeps at least.
        l1_lambda: L1 penalty on BN scales during the search (1e-4 as network slimming).
        distance_threshold: the ticket is drawn when the max FIFO mask distance is below it.
        fifo_size: masks in the FIFO (>= 2).
        search_epochs_max: search budget, < ``train.epochs`` unless ``retrain_epochs`` is set;
            without a draw the last epoch's mask is used.
        stop_when_drawn: stop the search at the draw (else continue to ``search_epochs_max``
            and record the draw; the ticket is still the drawn epoch's weights and mask).
        retrain_epochs: epochs for the slimmed net (``None``: ``train.epochs - search
            epochs``, so both runs see the same number of epochs).
        retrain_init: ``"inherit"`` (start from the ticket's weights) or ``"reinit"``.
        run_baseline: also train the full network for ``train.epochs`` (for the comparison).
        search_lr_schedule: LR schedule of the search (``"constant"``: the high-LR phase in
            which Early-Bird tickets emerge); ``train.lr_schedule`` is the retraining's and
            the baseline's.
        train: the optimiser and schedule of every phase; ``train.epochs`` is the full
            baseline's epochs (the total budget) and ``train.seed`` seeds everything random
            (initialisation, data subset and order).
    """

    model: str = "vgg-small"
    width: float = 0.5
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    subset: int | None = 15_000
    val_size: int = 0
    prune_ratio: float = 0.5
    prune_scope: str = "global"
    coupled: bool = True
    min_channels: int = 1
    l1_lambda: float = 1e-4
    distance_threshold: float = 0.1
    fifo_size: int = 5
    search_epochs_max: int = 10
    stop_when_drawn: bool = True
    retrain_epochs: int | None = None
    retrain_init: str = "inherit"
    run_baseline: bool = True
    search_lr_schedule: str = "constant"
    train: TrainConfig = dataclasses.field(default_factory=default_earlybird_train)

    def validate(self) -> None:
        from sparseprior.data import DATASETS
        from sparseprior.models import MODELS, model_options

        check_choice(self.model, "model", sorted(MODELS))
        if float(self.width) != 1.0 and "width" not in model_options(self.model):
            raise ValueError(f"width={self.width!r} is not supported by model {self.model!r}; "
                             f"use width=1.0 or a VGG/ResNet model")
        check_range(float(self.width), "width", 0.0, None, low_inclusive=False)
        check_choice(self.dataset, "dataset", sorted(DATASETS))
        if self.subset is not None:
            check_positive_int(self.subset, "subset")
        check_positive_int(self.val_size, "val_size", allow_zero=True)
        check_earlybird_args(self.prune_ratio, self.distance_threshold, self.fifo_size,
                             self.l1_lambda)
        check_choice(self.prune_scope, "prune_scope", PRUNE_SCOPES)
        check_positive_int(self.min_channels, "min_channels")
        check_positive_int(self.search_epochs_max, "search_epochs_max")
        if self.search_epochs_max < self.fifo_size:
            raise ValueError(f"search_epochs_max={self.search_epochs_max} must be >= "
                             f"fifo_size={self.fifo_size}: a ticket needs a full FIFO of masks")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__} "
                             f"(use EarlyBirdConfig.from_dict for dicts)")
        self.train.validate()
        if self.retrain_epochs is not None:
            check_positive_int(self.retrain_epochs, "retrain_epochs")
        elif self.search_epochs_max >= self.train.epochs:
            raise ValueError(f"search_epochs_max={self.search_epochs_max} must be < "
                             f"epochs={self.train.epochs} when retrain_epochs=None (retraining "
                             f"gets the epochs left); or set retrain_epochs")
        check_choice(self.retrain_init, "retrain_init", RETRAIN_INITS)
        check_choice(self.search_lr_schedule, "search_lr_schedule", ("constant", "cosine"))
        check_choice(self.train.optimizer, "optimizer", OPTIMIZERS)
        check_choice(self.train.lr_schedule, "lr_schedule",
                     [s for s in LR_SCHEDULES if s != "step"])

    @property
    def seed(self) -> int:
        """``train.seed``: the seed of everything random in the experiment."""
        return int(self.train.seed)

    @property
    def epochs(self) -> int:
        """``train.epochs``: the full baseline's epochs, the total budget."""
        return int(self.train.epochs)

    def train_config(self, epochs: int, lr_schedule: str, device: str) -> TrainConfig:
        """The :class:`TrainConfig` of one phase."""
        return self.train.replace(epochs=epochs, lr_schedule=lr_schedule, device=device)

    def build_kwargs(self, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
        """Keyword arguments of ``build_model(self.model, **kw)`` for this data."""
        c, h, w = (int(s) for s in input_shape)
        kw: dict[str, Any] = {"in_channels": c, "num_classes": int(num_classes),
                              "input_size": [h, w]}
        if float(self.width) != 1.0:
            kw["width"] = float(self.width)
        return kw


# --------------------------------------------------------------------------- experiment


def _build(config: EarlyBirdConfig, kw: Mapping[str, Any]) -> nn.Module:
    from sparseprior.models import build_model

    build = dict(kw)
    build["input_size"] = tuple(build["input_size"])
    torch.manual_seed(config.seed)
    return build_model(config.model, **build)


def _evaluate(model: nn.Module, data: Any, config: EarlyBirdConfig, device: str) -> float:
    """Test accuracy with the engine's evaluation (a throw-away Trainer)."""
    from sparseprior.engine.trainer import Trainer

    trainer = Trainer(model, data, config.train_config(1, "constant", device))
    return float(trainer.evaluate(data)["accuracy"])


def _train(model: nn.Module, splits: Any, tc: TrainConfig, run: Path,
           callbacks: Sequence[Callback] = ()) -> tuple[float | None, float, int]:
    """Fit; return (test accuracy or None, seconds, epochs run)."""
    from sparseprior.engine.trainer import Trainer

    start = time.perf_counter()
    trainer = Trainer(model, splits.train, tc, test_set=splits.test, callbacks=callbacks,
                      run_dir=run)
    history = trainer.fit()
    acc = trainer.test_metrics["accuracy"] if trainer.test_metrics else None
    return acc, time.perf_counter() - start, len(history)


def _search(config: EarlyBirdConfig, model: nn.Module, splits: Any, run: RunDir, device: str
            ) -> tuple[EarlyBirdCallback, float, int]:
    cb = EarlyBirdCallback(
        config.prune_ratio, l1_lambda=config.l1_lambda, threshold=config.distance_threshold,
        fifo_size=config.fifo_size, scope=config.prune_scope, coupled=config.coupled,
        min_channels=config.min_channels, stop_when_drawn=config.stop_when_drawn)
    from sparseprior.engine.trainer import Trainer

    start = time.perf_counter()
    tc = config.train_config(config.search_epochs_max, config.search_lr_schedule, device)
    trainer = Trainer(model, splits.train, tc, callbacks=[cb], run_dir=run.path / "search")
    history = trainer.fit()
    return cb, time.perf_counter() - start, len(history)


def _cost(macs: int, params: int) -> dict[str, Any]:
    return {"params": int(params), "macs": int(macs), "flops": 2 * int(macs)}


def _pct(new: float, old: float) -> float:
    return 100.0 * (1.0 - new / old) if old else math.nan


def default_run_dir(config: EarlyBirdConfig, root: str | Path = "runs/earlybird") -> Path:
    """``<root>/<model>-<hash of the non-default settings>`` (machine settings left out)."""
    from sparseprior.engine.experiment import run_name

    return Path(root) / run_name(config.model, config)


def run_earlybird(config: EarlyBirdConfig, run_dir: str | Path | RunDir,
                  device: str | torch.device = "auto") -> dict[str, Any]:
    """Search an Early-Bird ticket, slim it, retrain it; train the full baseline; report.

    The folder is claimed for ``config`` first (:meth:`RunDir.claim`: another experiment's
    folder is a ``ValueError``; machine settings may differ) and locked while the run goes on.
    Writes into ``run_dir``: ``config.json``, ``earlybird.json`` (the returned dict),
    ``mask_distance.png``, ``slim_model.safetensors`` (+ ``.json``; load with
    :func:`load_slimmed`) and per-phase folders ``search/``, ``retrain/``, ``baseline/`` with
    ``metrics.jsonl``.

    Returns a dict with ``drawn_epoch`` (1-based, ``None`` if not drawn), ``search_epochs``,
    ``retrain_epochs``, ``baseline_epochs``, ``full`` / ``slim`` (``params``, ``macs``, ``flops``
    = 2 x MACs per image, ``test_acc``), ``reduction`` (% fewer params / FLOPs),
    ``training_flops`` (EB vs full, ``3 x forward FLOPs x images x epochs``, and the saving),
    ``distances``, ``distance_matrix``, ``max_abs_diff_masked_vs_slim``, ``wall_time``.
    """
    from sparseprior.engine.experiment import MACHINE_FIELDS

    config.validate()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    with run.lock():
        run.claim(config, may_differ=MACHINE_FIELDS, kind=KIND)
        return _run(config, run, str(device))


def _run(config: EarlyBirdConfig, run: RunDir, dev: str) -> dict[str, Any]:
    from sparseprior.data import load_dataset

    t0 = time.perf_counter()
    splits = load_dataset(config.dataset, config.data_root, val_size=config.val_size,
                          subset=config.subset, seed=config.seed)
    kw = config.build_kwargs(splits.input_shape, splits.num_classes)
    n_train = len(splits.train)

    model = _build(config, kw)
    cb, t_search, search_run = _search(config, model, splits, run, dev)
    model = model.cpu()
    if cb.ticket_state is not None:
        model.load_state_dict(cb.ticket_state)
    masks = cb.ticket_masks if cb.ticket_masks is not None else cb.last_masks
    search_epochs = cb.drawn_epoch if cb.drawn_epoch is not None else search_run

    model.eval()
    example = model.example_input(4).normal_(generator=torch.Generator().manual_seed(1))
    masked = masked_model(model, masks)
    slim = slim_model(model, masks)
    with torch.no_grad():
        diff = float((masked(example) - slim(example)).abs().max())
    full_cost = _cost(count_macs(model), count_params(model))
    slim_cost = _cost(count_macs(slim), count_params(slim))
    slim_cost["channels"] = channel_counts(slim)
    full_cost["channels"] = channel_counts(model)
    ticket_acc = _evaluate(copy.deepcopy(slim), splits.test, config, dev)

    retrain_epochs = config.retrain_epochs or max(1, config.epochs - search_epochs)
    if config.retrain_init == "reinit":
        from sparseprior.models import init_weights

        torch.manual_seed(config.seed)
        init_weights(slim)
    slim.train()
    slim_acc, t_retrain, _ = _train(
        slim, splits, config.train_config(retrain_epochs, config.train.lr_schedule, dev),
        run.path / "retrain")
    slim = slim.cpu().eval()
    ckpt = save_slimmed(slim, run.file("slim_model.safetensors"), model_name=config.model,
                        build_kwargs=kw, meta={"drawn_epoch": cb.drawn_epoch,
                                               "test_acc": slim_acc, "config": config.to_dict()})

    full_acc, t_base = None, 0.0
    if config.run_baseline:
        base = _build(config, kw)
        full_acc, t_base, _ = _train(
            base, splits, config.train_config(config.epochs, config.train.lr_schedule, dev),
            run.path / "baseline")
    full_cost["test_acc"], slim_cost["test_acc"] = full_acc, slim_acc
    slim_cost["test_acc_before_retrain"] = ticket_acc

    eb_train = 3 * n_train * (search_epochs * full_cost["flops"]
                              + retrain_epochs * slim_cost["flops"])
    full_train = 3 * n_train * config.epochs * full_cost["flops"]
    matrix = distance_matrix(cb.mask_history)
    result: dict[str, Any] = {
        "config": config.to_dict(), "dataset": splits.describe(),
        "drawn": cb.drawn, "drawn_epoch": cb.drawn_epoch, "search_epochs": search_epochs,
        "search_epochs_run": search_run, "retrain_epochs": retrain_epochs,
        "baseline_epochs": config.epochs,
        "kept_channel_fraction": float(mask_vector(masks, cb.groups).float().mean()),
        "groups": [list(g.names) for g in cb.groups],
        "full": full_cost, "slim": slim_cost,
        "reduction": {"params_pct": _pct(slim_cost["params"], full_cost["params"]),
                      "flops_pct": _pct(slim_cost["flops"], full_cost["flops"])},
        "accuracy_gap": (full_acc - slim_acc) if full_acc is not None else None,
        "training_flops": {"earlybird": eb_train, "full": full_train,
                           "saving_pct": _pct(eb_train, full_train), "n_train": n_train,
                           "formula": "3 * n_train * (search_epochs * F_full + "
                                      "retrain_epochs * F_slim); full: 3 * n_train * epochs "
                                      "* F_full; F = forward FLOPs per image = 2 * MACs"},
        "distances": cb.distances, "prev_distances": cb.prev_distances,
        "distance_matrix": matrix.tolist(),
        "max_abs_diff_masked_vs_slim": diff,
        "wall_time": {"search": t_search, "retrain": t_retrain, "baseline": t_base,
                      "total": time.perf_counter() - t0},
        "files": {"checkpoint": ckpt.name, "plot": "mask_distance.png"},
    }
    plot_mask_distances(run.file("mask_distance.png"), matrix, cb.distances,
                        config.distance_threshold, cb.drawn_epoch,
                        title=f"{config.model} (width {config.width:g}) on {config.dataset}, "
                              f"p={config.prune_ratio:g}")
    run.write_json("earlybird.json", result)
    return result


# --------------------------------------------------------------------------- plot, report


def plot_mask_distances(path: str | Path, matrix: Tensor, distances: Sequence[float | None],
                        threshold: float, drawn_epoch: int | None, *, title: str = "") -> Path:
    """Two panels: the ``(E, E)`` pairwise mask-distance heatmap (as in the paper's Fig. 2)
    and the max FIFO distance per epoch with the threshold and the draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    n = matrix.shape[0]
    im = ax1.imshow(matrix.numpy(), cmap="viridis", origin="lower",
                    extent=(0.5, n + 0.5, 0.5, n + 0.5), vmin=0.0)
    fig.colorbar(im, ax=ax1, label="normalised Hamming distance")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("epoch")
    ax1.set_title("mask distance between epochs")
    epochs = [i + 1 for i, d in enumerate(distances) if d is not None]
    values = [d for d in distances if d is not None]
    ax2.plot(epochs, values, marker="o", label="max distance in FIFO")
    ax2.axhline(threshold, color="r", ls="--", label=f"threshold {threshold:g}")
    if drawn_epoch is not None:
        ax2.axvline(drawn_epoch, color="g", ls=":", label=f"drawn at epoch {drawn_epoch}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("distance")
    ax2.set_xlim(0.5, max(len(distances), 1) + 0.5)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def result_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The summary table of a :func:`run_earlybird` result: one row per network."""
    full, slim = result["full"], result["slim"]
    tf = result["training_flops"]

    def acc(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    return [
        {"network": "full (baseline)", "epochs": result["baseline_epochs"],
         "params": full["params"], "MFLOPs/img": full["flops"] / 1e6,
         "test acc %": acc(full["test_acc"]), "train PFLOPs": tf["full"] / 1e15},
        {"network": f"Early-Bird slim (drawn @ {result['drawn_epoch'] or '-'})",
         "epochs": f"{result['search_epochs']}+{result['retrain_epochs']}",
         "params": slim["params"], "MFLOPs/img": slim["flops"] / 1e6,
         "test acc %": acc(slim["test_acc"]), "train PFLOPs": tf["earlybird"] / 1e15},
        {"network": "reduction %", "params": result["reduction"]["params_pct"],
         "MFLOPs/img": result["reduction"]["flops_pct"],
         "test acc %": "-" if result["accuracy_gap"] is None
         else f"{-100 * result['accuracy_gap']:+.2f} pt",
         "train PFLOPs": tf["saving_pct"]},
    ]


def section_config(mode: str) -> EarlyBirdConfig:
    """The config of :func:`earlybird_section`: ``quick`` (about a minute on 2 CPU cores) or
    ``full`` (the benchmark's)."""
    check_choice(mode, "mode", ("quick", "full"))
    if mode == "quick":
        return EarlyBirdConfig(width=0.25, subset=4000, fifo_size=3, search_epochs_max=8,
                               train=default_earlybird_train().replace(epochs=10,
                                                                       progress=False))
    return EarlyBirdConfig(width=0.5, subset=15000, fifo_size=5, search_epochs_max=10,
                           train=default_earlybird_train().replace(progress=False))


def earlybird_section(run: RunDir, mode: str, device: torch.device, *,
                      dataset: str | None = None) -> Section:
    """``reproduce`` section: Early-Bird on Fashion-MNIST (sklearn digits if it is missing).

    ``quick``: vgg-small at width 0.25 on 4000 training images, 10 epochs (about a minute on 2
    CPU cores); ``full``: the benchmark's config (width 0.5, 15k images, 16 epochs, ~12 min).
    ``dataset`` forces a dataset (``"digits"`` uses all its 1437 training images). Writes
    ``earlybird.json``, ``mask_distance.png`` and ``slim_model.safetensors`` into ``run``.
    """
    from sparseprior.common.results import Section

    config = section_config(mode)
    if dataset is None:
        try:
            from sparseprior.data import load_dataset

            load_dataset(config.dataset, config.data_root, subset=16, seed=config.seed)
        except (ValueError, OSError) as err:
            log.warning("Fashion-MNIST unavailable (%s); falling back to sklearn digits", err)
            dataset = "digits"
    if dataset is not None and dataset != config.dataset:
        config = config.replace(dataset=dataset, subset=None if dataset == "digits"
                                else config.subset)
    result = run_earlybird(config, run, device=device)
    notes = [
        f"{config.model} (width {config.width:g}) on {config.dataset} "
        f"({result['training_flops']['n_train']} training images, full test set); "
        f"prune ratio {config.prune_ratio:g} ({config.prune_scope}), L1 {config.l1_lambda:g} on "
        f"BN scales, FIFO {config.fifo_size}, threshold {config.distance_threshold:g}; SGD lr "
        f"{config.train.lr:g} ({config.search_lr_schedule} while searching, "
        f"{config.train.lr_schedule} "
        f"for retraining and the baseline); slim net retrained "
        f"{'from the ticket weights' if config.retrain_init == 'inherit' else 'from re-init'}.",
        ("Ticket drawn at epoch " + str(result["drawn_epoch"])) if result["drawn"] else
        f"No ticket drawn within {config.search_epochs_max} epochs; used the last mask.",
        "FLOPs = 2 x conv/linear MACs per image; training FLOPs = 3 x forward FLOPs x images x "
        "epochs (search epochs on the full net + retrain epochs on the slim net).",
    ]
    return Section("Early-Bird tickets (channel pruning)", rows=result_rows(result),
                   plots=["mask_distance.png"], notes=notes,
                   data={k: v for k, v in result.items() if k != "distance_matrix"})
