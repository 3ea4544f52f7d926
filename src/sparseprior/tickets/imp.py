"""Iterative magnitude pruning (IMP) with weight rewinding (Frankle & Carbin 2019; Frankle et al.
2020), plus the two standard controls.

One IMP run::

    level 0   train the dense network from init theta_0, keeping theta_k (the weights after
              ``rewind_step`` = k optimizer steps; k = 0 is the original LTH: rewind to init)
    level L   rank the *trained* weights of level L-1 by magnitude among the surviving ones and
              keep a fraction (1 - rate)^L of them (globally or per layer); rewind the survivors
              to theta_k exactly; retrain with the mask (the one ``Trainer``)

Controls at the same per-layer densities as each IMP level L:

* ``reinit``: the IMP mask with a fresh random initialisation (a different seed);
* ``random``: a random mask with exactly the IMP level's per-layer counts, on the rewound
  weights theta_k.

Run folder (every file written atomically; a rerun skips every finished level/control)::

    <run>/config.json              IMPConfig
    <run>/rewind.safetensors|json  theta_k (full state_dict, buffers included)
    <run>/results.json             one row per level (IMP and controls)
    <run>/level_00/                dense: train_config.json, metrics.jsonl, masks.*, final.*,
                                   summary.json
    <run>/level_03/                IMP ticket at density 0.8^3 (same files)
    <run>/level_03/reinit/         control (a), same files
    <run>/level_03/random/         control (b), same files

``summary.json`` holds the level, the density *counted from the trained weights* (global and per
layer), the target density and the test accuracy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.checkpoint import (
    load_safetensors_checkpoint,
    save_safetensors_checkpoint,
)
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_choice, check_positive_int, check_range
from sparseprior.data import DatasetSplits
from sparseprior.engine import (
    Callback,
    TrainConfig,
    Trainer,
    WeightSnapshot,
    latest_checkpoint,
)
from sparseprior.engine.experiment import MACHINE_FIELDS, run_name
from sparseprior.models import build_model_for
from sparseprior.sparsity import (
    MaskSet,
    imp_density,
    magnitude_scores,
    prunable_parameters,
    random_scores,
    select_masks,
    sparsity_stats,
)
from sparseprior.workloads import ModelDataConfig

log = logging.getLogger(__name__)

SCOPES = ("global", "layerwise")
ABLATIONS = ("reinit", "random")
SUMMARY = "summary.json"
WEIGHTS_KIND = "tickets/weights"
REWIND_FILE = "rewind"
MODEL_FILE = "model.json"
#: Seed offsets of the controls (added to ``seed + level``), so every control differs from the
#: IMP run and from each other.
REINIT_SEED_OFFSET = 1000
RANDOM_MASK_SEED_OFFSET = 2000


def default_imp_train() -> TrainConfig:
    """The default retraining schedule: Adam 1.2e-3 (the LTH LeNet setting) with cosine decay,
    batch 128, no weight decay, 5 epochs."""
    return TrainConfig(epochs=5, batch_size=128, optimizer="adam", lr=1.2e-3,
                       lr_schedule="cosine", weight_decay=0.0)


@dataclasses.dataclass
class IMPConfig(ModelDataConfig):
    """One IMP-with-rewinding experiment.

    Attributes:
        model: a key of :data:`sparseprior.models.MODELS` (``lenet300``, ``mlp``, ``resnet20``,
            ...).
        model_options: extra keywords of the model builder (``{"hidden": [256, 256]}`` for
            ``mlp``).
        dataset: a key of :data:`sparseprior.data.DATASETS`.
        dataset_options: dataset-specific options of :func:`~sparseprior.data.load_dataset`
            (``synthetic``: ``n_train``, ``n_test``, ``image_shape``, ...).
        data_root: the dataset folder (``None``: the dataset's default).
        subset: keep this many training images (``None``: all).
        val_size: training images held out for validation (0: none).
        levels: pruning rounds after the dense level 0 (level L has density
            ``(1 - rate) ** L``).
        rate: fraction of the *remaining* weights pruned per level, in (0, 1).
        scope: ``'global'`` (rank all prunable layers together) or ``'layerwise'`` (each layer
            keeps ``(1 - rate) ** L`` of its weights).
        rewind_step: k, the optimizer step whose weights the survivors are rewound to
            (0 = the original lottery ticket: rewind to the initialisation).
        include_output: also prune the output layer (default: keep it dense, as open_lth).
        init_seed: model initialisation and dataset split/subset seed (``None``: ``train.seed``,
            the data order's seed; filled in at construction).
        ablations: controls to run: ``'reinit'`` and/or ``'random'``.
        ablation_levels: the levels (1..levels) that get the controls (``None``: all).
        keep_level_checkpoints: keep each level's trainer checkpoints after it finished (they
            are only needed to resume an interrupted level).
        train: the training schedule of every level (a :class:`TrainConfig`).
    """

    levels: int = 3
    rate: float = 0.2
    scope: str = "global"
    rewind_step: int = 0
    include_output: bool = False
    init_seed: int | None = None
    ablations: list[str] = dataclasses.field(default_factory=list)
    ablation_levels: list[int] | None = None
    keep_level_checkpoints: bool = False
    train: TrainConfig = dataclasses.field(default_factory=default_imp_train)

    def __post_init__(self) -> None:
        if self.init_seed is None and isinstance(self.train, TrainConfig):
            self.init_seed = self.train.seed
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        check_positive_int(self.levels, "levels", allow_zero=True)
        check_range(float(self.rate), "rate", 0.0, 1.0, low_inclusive=False,
                    high_inclusive=False)
        check_choice(self.scope, "scope", SCOPES)
        check_positive_int(self.rewind_step, "rewind_step", allow_zero=True)
        if self.init_seed is not None:
            check_positive_int(self.init_seed, "init_seed", allow_zero=True)
        for name in self.ablations:
            check_choice(name, "ablations[i]", ABLATIONS)
        if self.ablation_levels is not None:
            for level in self.ablation_levels:
                check_positive_int(level, "ablation_levels[i]")
                if level > self.levels:
                    raise ValueError(f"ablation_levels has level {level} but the run has only "
                                     f"levels 1..{self.levels}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__} "
                             f"(use IMPConfig.from_dict for dicts)")
        self.train.validate()

    def density(self, level: int) -> float:
        """Target density of ``level``: ``(1 - rate) ** level``."""
        return imp_density(level, self.rate)

    def control_levels(self) -> list[int]:
        """Levels that get the ablation controls."""
        if not self.ablations:
            return []
        levels = self.ablation_levels
        return sorted(set(levels)) if levels is not None else list(range(1, self.levels + 1))


#: Fields that may change between a run and its continuation (more levels or controls, machine
#: settings); every other field must match the folder's ``config.json``.
RESUMABLE_FIELDS = ("levels", "ablations", "ablation_levels", "keep_level_checkpoints",
                    *MACHINE_FIELDS)
KIND = "IMP experiment"


def default_run_dir(config: IMPConfig, root: str | Path = "runs/imp") -> Path:
    """``<root>/<model>-<hash>``: the hash covers the non-default settings except
    :data:`RESUMABLE_FIELDS`, so more levels continue the same folder."""
    return Path(root) / run_name(config.model, config, ignore=RESUMABLE_FIELDS)


# --------------------------------------------------------------------------- building blocks


def level_dir(run_dir: str | Path, level: int) -> Path:
    """``<run_dir>/level_<LL>``."""
    return Path(run_dir) / f"level_{level:02d}"


def build_seeded_model(config: IMPConfig, splits: Any, seed: int) -> nn.Module:
    """``config.model`` for ``splits`` (anything with ``input_shape`` and ``num_classes``, e.g.
    a :class:`DatasetSplits`), initialised from ``seed`` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model_for(config.model, splits, **config.model_options)


def prunable_names(model: nn.Module, include_output: bool = False) -> list[str]:
    """Names of the weights IMP prunes (conv/linear weights; the output layer only if asked)."""
    return list(prunable_parameters(model, include_output=include_output))


def prune_by_magnitude(
    weights: Mapping[str, Tensor],
    active: Mapping[str, Tensor],
    density: float,
    scope: str = "global",
) -> MaskSet:
    """One IMP pruning step: keep the largest ``|w|`` among the surviving weights.

    Args:
        weights: name -> trained weight (the previous level's final weights).
        active: name -> bool mask of the surviving weights (the previous level's mask).
        density: fraction of *all* the weights (not of the survivors) to keep, e.g.
            ``0.8 ** L``.
        scope: ``'global'`` ranks every layer together and keeps exactly
            ``round(density * total)``; ``'layerwise'`` keeps ``round(density * n_l)`` of
            each layer.

    Returns:
        the new :class:`MaskSet` (a subset of ``active`` while ``density`` is below the
        surviving fraction).
    """
    check_choice(scope, "scope", SCOPES)
    missing = [n for n in active if n not in weights]
    if missing:
        raise ValueError(f"weights has no entry for masked layer(s) {missing}")
    scores = magnitude_scores({n: weights[n] for n in active})
    return MaskSet(select_masks(scores, density=density, scope=scope, active=active))


def matched_random_masks(masks: Mapping[str, Tensor], seed: int) -> MaskSet:
    """A random mask with exactly the same number of kept weights in every layer as ``masks``.

    Positions are drawn uniformly at random (from ``seed``) within each layer.
    """
    densities = {n: int(m.sum()) / m.numel() for n, m in masks.items()}
    scores = random_scores(dict(masks), seed)
    return MaskSet(select_masks(scores, densities=densities, scope="layerwise"))


@torch.no_grad()
def rewind_(model: nn.Module, state: Mapping[str, Tensor], masks: MaskSet | None = None
            ) -> nn.Module:
    """Load ``state`` (the weights at the rewind step) into ``model`` and zero the pruned weights.

    Every surviving weight equals ``state`` exactly afterwards. Returns ``model``.
    """
    model.load_state_dict(dict(state))
    if masks is not None:
        masks.apply_(model)
    return model


def save_weights(path: str | Path, model: nn.Module, info: Mapping[str, Any] | None = None
                 ) -> Path:
    """Save ``model.state_dict()`` as ``<path>.safetensors`` + ``.json`` (atomic)."""
    return save_safetensors_checkpoint(path, dict(model.state_dict()), dict(info or {}),
                                       kind=WEIGHTS_KIND)


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict saved by :func:`save_weights` (CPU tensors)."""
    tensors, _ = load_safetensors_checkpoint(path, kind=WEIGHTS_KIND)
    return tensors


def train_ticket(
    model: nn.Module,
    masks: MaskSet | None,
    splits: DatasetSplits,
    train: TrainConfig,
    folder: str | Path,
    *,
    info: Mapping[str, Any],
    names: Sequence[str] | None = None,
    callbacks: Sequence[Callback] = (),
    before_summary: Callable[[Trainer], None] | None = None,
    keep_checkpoints: bool = False,
) -> dict[str, Any]:
    """Train ``model`` under ``masks`` in ``folder`` and write its summary; resumable.

    If ``folder/summary.json`` exists the training is skipped and the summary returned. An
    interrupted training continues from its last checkpoint (exact resume). Files: the masks
    (``masks.*``; all-ones when ``masks`` is ``None``), the trainer's ``train_config.json`` and
    ``metrics.jsonl``, the final weights (``final.*``) and ``summary.json``.

    Args:
        model: the network, already holding its starting weights.
        masks: kept weights (``None``: dense).
        splits: the data (``train`` to fit, ``val`` if any, ``test`` for the summary).
        train: the schedule.
        folder: the run folder of this training.
        info: fields copied into the summary (level, variant, target density, seeds, ...).
        names: weights whose density is counted (default: the masks' names, or the
            prunable weights when dense).
        callbacks: trainer callbacks (e.g. a :class:`WeightSnapshot`).
        before_summary: called with the trainer after training and before the summary is
            written (so a crash in between is retried from the checkpoint).
        keep_checkpoints: keep ``checkpoints/`` after the summary is written.

    Returns:
        the summary dict: ``info`` plus ``density``/``sparsity``/``nonzero``/``total``
        counted from the trained weights, ``layer_density``, ``test_accuracy``,
        ``test_loss``, ``val_accuracy`` (or ``None``), ``train_accuracy``, ``steps`` and
        ``seconds``; ``cached: True`` is added when it was read from an earlier run.
    """
    run = RunDir(folder)
    if run.file(SUMMARY).exists():
        return {**run.read_json(SUMMARY), "cached": True}
    if names is None:
        names = masks.names if masks is not None else prunable_names(model)
    saved_masks = masks if masks is not None else MaskSet.dense(model, names=list(names))
    saved_masks.save(run.file("masks"), meta=dict(info))
    start = time.perf_counter()
    trainer = Trainer(model, splits.train, train, val_set=splits.val, masks=masks, run_dir=run,
                      callbacks=callbacks)
    history = trainer.fit(resume=latest_checkpoint(run.path / "checkpoints") is not None)
    test = trainer.evaluate(splits.test)
    run.log_metrics({"kind": "test", "step": trainer.step, **test})
    if before_summary is not None:
        before_summary(trainer)
    save_weights(run.file("final"), trainer.model, info)
    stats = sparsity_stats({n: p.detach() for n, p in trainer.model.named_parameters()
                            if n in set(names)})
    last = history[-1] if history else {}
    summary = {
        **info,
        "density": stats.density, "sparsity": stats.sparsity,
        "nonzero": stats.nonzero, "total": stats.total,
        "layer_density": {n: s.density for n, s in stats.layers.items()},
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "val_accuracy": last.get("val_acc"), "train_accuracy": last.get("train_acc"),
        "steps": trainer.step, "seconds": time.perf_counter() - start,
    }
    run.write_json(SUMMARY, summary)
    if not keep_checkpoints and trainer.checkpoint_dir is not None:
        shutil.rmtree(trainer.checkpoint_dir, ignore_errors=True)
    return summary


# --------------------------------------------------------------------------- the experiment


@dataclasses.dataclass
class IMPResult:
    """Summaries of one IMP run.

    Attributes:
        run_dir: the run folder.
        levels: IMP summaries, level 0 (dense) first.
        controls: control name (``'reinit'``, ``'random'``) -> summaries of the levels that
            have it.
    """

    run_dir: Path
    levels: list[dict[str, Any]]
    controls: dict[str, list[dict[str, Any]]]

    @property
    def dense_accuracy(self) -> float:
        """Test accuracy of the dense network (level 0)."""
        return float(self.levels[0]["test_accuracy"])

    def rows(self) -> list[dict[str, Any]]:
        """One table row per level: level, counted density, and each variant's test accuracy."""
        by_level = {name: {s["level"]: s for s in items} for name, items in self.controls.items()}
        rows = []
        for s in self.levels:
            row: dict[str, Any] = {"level": s["level"], "density": s["density"],
                                   "imp_acc": s["test_accuracy"]}
            for name in ABLATIONS:
                if name in by_level:
                    hit = by_level[name].get(s["level"])
                    row[f"{name}_acc"] = hit["test_accuracy"] if hit else None
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "levels": self.levels, "controls": self.controls,
                "rows": self.rows()}


def load_imp_result(run_dir: str | Path) -> IMPResult:
    """Read the summaries of every finished level/control of an IMP run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ValueError(f"{str(run_dir)!r} is not an IMP run folder (no config.json)")
    levels, controls = [], {}
    for folder in sorted(run_dir.glob("level_*")):
        if (folder / SUMMARY).exists():
            levels.append(RunDir(folder).read_json(SUMMARY))
        for name in ABLATIONS:
            path = folder / name / SUMMARY
            if path.exists():
                controls.setdefault(name, []).append(RunDir(path.parent).read_json(SUMMARY))
    return IMPResult(run_dir, levels, controls)


def load_splits(config: IMPConfig) -> DatasetSplits:
    """The dataset of ``config`` (``subset``, ``val_size`` and ``seed`` applied)."""
    return config.load_splits(config.init_seed)


def _train_dense(config: IMPConfig, splits: DatasetSplits, run: RunDir
                 ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Level 0: dense training from init, keeping theta_k in ``rewind.safetensors``."""
    rewind_path = run.file(REWIND_FILE)
    train = config.train
    per_epoch = len(splits.train) // train.batch_size if train.drop_last else \
        math.ceil(len(splits.train) / train.batch_size)
    total = per_epoch * train.epochs if train.max_steps is None else \
        min(per_epoch * train.epochs, train.max_steps)
    if config.rewind_step > total:
        raise ValueError(f"rewind_step={config.rewind_step} is beyond the {total} optimizer "
                         f"steps of the dense training; choose rewind_step <= {total}")
    snapshot = WeightSnapshot(at_steps=[config.rewind_step])

    def keep_rewind(trainer: Trainer) -> None:
        state = snapshot.snapshots.get(config.rewind_step)
        if state is None:
            raise ValueError(f"rewind_step={config.rewind_step} is beyond the "
                             f"{trainer.step} optimizer steps of the dense training; "
                             f"choose rewind_step <= {trainer.step}")
        save_safetensors_checkpoint(rewind_path, state, {"rewind_step": config.rewind_step},
                                    kind=WEIGHTS_KIND)

    model = build_seeded_model(config, splits, config.init_seed)
    names = prunable_names(model, config.include_output)
    info = {"level": 0, "variant": "imp", "target_density": 1.0, "init_seed": config.init_seed,
            "rewind_step": config.rewind_step}
    summary = train_ticket(model, None, splits, config.train, level_dir(run.path, 0),
                           info=info, names=names, callbacks=[snapshot],
                           before_summary=keep_rewind,
                           keep_checkpoints=config.keep_level_checkpoints)
    return summary, load_weights(rewind_path)


def _imp_level(config: IMPConfig, splits: DatasetSplits, run: RunDir, level: int,
               rewind_state: Mapping[str, Tensor]) -> tuple[dict[str, Any], MaskSet]:
    """Level L >= 1: prune the level L-1 weights, rewind, retrain."""
    folder = level_dir(run.path, level)
    prev = level_dir(run.path, level - 1)
    if (folder / "masks.safetensors").exists():
        masks = MaskSet.load(folder / "masks")
    else:
        trained = load_weights(prev / "final")
        active = MaskSet.load(prev / "masks")
        masks = prune_by_magnitude(trained, active, config.density(level), config.scope)
    model = build_seeded_model(config, splits, config.init_seed)
    rewind_(model, rewind_state, masks)
    info = {"level": level, "variant": "imp", "target_density": config.density(level),
            "init_seed": config.init_seed, "rewind_step": config.rewind_step}
    summary = train_ticket(model, masks, splits, config.train, folder, info=info,
                           keep_checkpoints=config.keep_level_checkpoints)
    return summary, masks


def _control(config: IMPConfig, splits: DatasetSplits, run: RunDir, level: int, name: str,
             imp_masks: MaskSet, rewind_state: Mapping[str, Tensor]) -> dict[str, Any]:
    """One control at ``level``: ``'reinit'`` (IMP mask, new init) or ``'random'`` (random
    mask with the IMP per-layer counts, rewound weights)."""
    info: dict[str, Any] = {"level": level, "variant": name,
                            "target_density": config.density(level),
                            "rewind_step": config.rewind_step}
    if name == "reinit":
        seed = config.init_seed + REINIT_SEED_OFFSET + level
        model = build_seeded_model(config, splits, seed)
        masks = imp_masks.clone()
        masks.apply_(model)
        info["init_seed"] = seed
    else:
        seed = config.init_seed + RANDOM_MASK_SEED_OFFSET + level
        masks = matched_random_masks(imp_masks, seed)
        model = build_seeded_model(config, splits, config.init_seed)
        rewind_(model, rewind_state, masks)
        info.update(init_seed=config.init_seed, mask_seed=seed)
    return train_ticket(model, masks, splits, config.train,
                        level_dir(run.path, level) / name, info=info,
                        keep_checkpoints=config.keep_level_checkpoints)


def _log_summary(summary: dict[str, Any], levels: int) -> None:
    """Log one finished training (and drop the ``cached`` marker from its summary)."""
    cached = summary.pop("cached", False)
    log.info("IMP level %d/%d [%s]: density %.4f (target %.4f), test acc %.4f, %.1f s%s",
             summary["level"], levels, summary["variant"], summary["density"],
             summary["target_density"], summary["test_accuracy"], summary["seconds"],
             " (finished earlier)" if cached else "")


def run_imp(
    config: IMPConfig,
    run_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    splits: DatasetSplits | None = None,
) -> IMPResult:
    """Run (or continue) IMP with rewinding and its controls; see the module docstring.

    Args:
        config: the experiment.
        run_dir: the run folder, claimed for ``config`` first (:meth:`RunDir.claim`; only
            :data:`RESUMABLE_FIELDS` may differ, else ``ValueError``) and locked while the
            run goes on; finished levels/controls in it are skipped, an interrupted one resumes
            from its checkpoint.
        device: overrides ``config.train.device`` (``'cpu'``, ``'cuda'``, a ``torch.device``).
        splits: the data, if already loaded (default: :func:`load_splits`).

    Returns:
        an :class:`IMPResult` (also written to ``<run_dir>/results.json``).
    """
    if device is not None:
        config = config.replace(train=config.train.replace(device=str(device)))
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    with run.lock():
        run.claim(config, may_differ=RESUMABLE_FIELDS, kind=KIND)
        return _run_levels(config, run, splits)


def _run_levels(config: IMPConfig, run: RunDir, splits: DatasetSplits | None) -> IMPResult:
    run_dir = run.path
    splits = splits if splits is not None else load_splits(config)
    run.write_json(MODEL_FILE, {"input_shape": list(splits.input_shape),
                                "num_classes": splits.num_classes})
    controls_at = set(config.control_levels())
    dense, rewind_state = _train_dense(config, splits, run)
    _log_summary(dense, config.levels)
    levels, controls = [dense], {name: [] for name in config.ablations}
    for level in range(1, config.levels + 1):
        summary, masks = _imp_level(config, splits, run, level, rewind_state)
        _log_summary(summary, config.levels)
        levels.append(summary)
        if level in controls_at:
            for name in config.ablations:
                ctrl = _control(config, splits, run, level, name, masks, rewind_state)
                _log_summary(ctrl, config.levels)
                controls[name].append(ctrl)
        run.write_json("results.json", IMPResult(run_dir, levels, controls).to_dict())
    result = IMPResult(run_dir, levels, controls)
    run.write_json("results.json", result.to_dict())
    return result


def load_ticket(run_dir: str | Path, level: int | None = None
                ) -> tuple[IMPConfig, nn.Module, MaskSet]:
    """The ticket of a finished IMP level: (config, model holding theta_k with the mask applied,
    mask). ``level=None`` takes the highest finished level."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ValueError(f"{str(run_dir)!r} is not an IMP run folder (no config.json)")
    config = IMPConfig.from_json(run_dir / "config.json")
    done = [int(p.parent.name.split("_")[1]) for p in run_dir.glob(f"level_*/{SUMMARY}")]
    if not done:
        raise ValueError(f"IMP run {str(run_dir)!r} has no finished level yet")
    level = max(done) if level is None else level
    if level not in done:
        raise ValueError(f"level={level} is not finished in {str(run_dir)!r}; finished: "
                         f"{sorted(done)}")
    shape = RunDir(run_dir).read_json(MODEL_FILE)
    model = build_seeded_model(config, _DataShape(tuple(shape["input_shape"]),
                                                  int(shape["num_classes"])), config.init_seed)
    masks = MaskSet.load(level_dir(run_dir, level) / "masks", model)
    rewind_(model, load_weights(run_dir / REWIND_FILE), masks)
    return config, model, masks


@dataclasses.dataclass
class _DataShape:
    """What :func:`build_model_for` reads from a dataset (``input_shape``, ``num_classes``)."""

    input_shape: tuple[int, ...]
    num_classes: int
