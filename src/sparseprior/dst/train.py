"""``run_dst``: train one model with one DST method and save a run folder.

Run folder (rank 0 writes; every file atomic except the append-only metrics log)::

    <run>/config.json          DSTRunConfig (rerun the run from it)
    <run>/model.json           input shape and number of classes (to rebuild the model)
    <run>/train_config.json    the trainer's TrainConfig
    <run>/metrics.jsonl        step/epoch/test records and one ``dst_update`` record per mask
                               update (per-layer active/target/dropped/grown counts, digest)
    <run>/masks.safetensors    final masks (+ .json)
    <run>/final.safetensors    final masked weights, the whole state_dict (+ .json)
    <run>/summary.json         test accuracy, density counted from the final weights (global and
                               per layer), mask density, number of updates, seconds

The folder is bound to its config (:meth:`RunDir.claim`, before anything is read back): a rerun
with the same settings (machine settings such as the device may differ) returns the finished
summary or resumes an interrupted run exactly from its last checkpoint (the initial mask is
rebuilt from the seed, then the checkpoint's mask loaded); other settings are a ``ValueError``.
A run holds the folder's lock, so a second process gets a clear error.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.checkpoint import (
    load_safetensors_checkpoint,
    save_safetensors_checkpoint,
)
from sparseprior.common.runs import RunDir
from sparseprior.data import DatasetSplits
from sparseprior.dst.config import DSTRunConfig
from sparseprior.dst.methods import DynamicSparsity, initial_masks
from sparseprior.engine import Trainer, latest_checkpoint
from sparseprior.engine.distributed import env_dist_info
from sparseprior.engine.experiment import MACHINE_FIELDS, run_name
from sparseprior.models import build_model
from sparseprior.sparsity import MaskSet, prunable_parameters, sparsity_stats

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
MODEL_FILE = "model.json"
WEIGHTS_KIND = "dst/weights"
KIND = "DST run"


def default_run_dir(config: DSTRunConfig, root: str | Path = "runs/dst") -> Path:
    """``<root>/<model>-<method>-<sparsity>-<hash>``: the hash covers every non-default
    setting except machine ones, so different experiments never share a folder."""
    prefix = f"{config.model}-{config.dst.method}-{config.dst.policy.target_sparsity():g}"
    return Path(root) / run_name(prefix, config, ignore=MACHINE_FIELDS)


def load_splits(config: DSTRunConfig) -> DatasetSplits:
    """The dataset of ``config`` (``subset``, ``val_size`` and ``init_seed`` applied)."""
    return config.load_splits(config.init_seed)


def build_seeded_model(config: DSTRunConfig, input_shape: tuple[int, ...], num_classes: int
                       ) -> nn.Module:
    """``config.model`` for inputs ``(B, *input_shape)``, initialised from ``init_seed`` without
    touching the global RNG."""
    c, h, w = input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed)
        return build_model(config.model, in_channels=c, num_classes=num_classes,
                           input_size=(h, w), **config.model_options)


def counted_sparsity(model: nn.Module, names: list[str]) -> dict[str, Any]:
    """Density/sparsity of ``names`` counted from the weights: global and per layer."""
    params = dict(model.named_parameters())
    stats = sparsity_stats({n: params[n].detach() for n in names})
    return {"density": stats.density, "sparsity": stats.sparsity, "nonzero": stats.nonzero,
            "total": stats.total,
            "layers": {n: {"shape": list(s.shape), "nonzero": s.nonzero, "total": s.total,
                           "sparsity": s.sparsity} for n, s in stats.layers.items()}}


def run_dst(
    config: DSTRunConfig,
    run_dir: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    splits: DatasetSplits | None = None,
) -> dict[str, Any]:
    """Train ``config`` (single process, or one rank under ``torchrun``) and return its summary.

    Args:
        config: the experiment.
        run_dir: the run folder (``None``: keep nothing on disk), claimed for ``config``
            first: a finished folder of the same experiment is not retrained, an interrupted
            one resumes, one holding another experiment is a ``ValueError`` (only
            :data:`~sparseprior.engine.experiment.MACHINE_FIELDS` may differ).
        device: overrides ``config.train.device``.
        splits: the data, if already loaded (default: :func:`load_splits`).

    Returns:
        the summary: method, sparsity target, ``density``/``sparsity``/``layers`` counted from
        the final weights, ``mask_density``, ``test_accuracy``, ``test_loss``,
        ``train_accuracy``, ``updates``, ``steps``, ``seconds`` (wall time of this call),
        ``train_seconds`` (training-loop time of all epochs, also across resumes) and
        ``step_seconds`` (``train_seconds`` per optimizer step); ``cached: True`` if read
        back.
    """
    if not isinstance(config, DSTRunConfig):
        raise TypeError(f"config must be a DSTRunConfig, got {type(config).__name__}")
    if device is not None:
        config = config.replace(train=config.train.replace(device=str(device)))
    is_main = env_dist_info().is_main
    run = RunDir(run_dir) if run_dir is not None else None
    with contextlib.ExitStack() as stack:
        if run is not None:
            if is_main:
                stack.enter_context(run.lock())
            run.claim(config, may_differ=MACHINE_FIELDS, kind=KIND)
            if run.file(SUMMARY).exists():
                return {**run.read_json(SUMMARY), "cached": True}
        return _train(config, run, is_main, splits)


def _train(config: DSTRunConfig, run: RunDir | None, is_main: bool,
           splits: DatasetSplits | None) -> dict[str, Any]:
    splits = splits if splits is not None else load_splits(config)
    model = build_seeded_model(config, splits.input_shape, splits.num_classes)
    masks = initial_masks(model, config.dst)
    names = masks.names if masks is not None else list(
        prunable_parameters(model, include_output=config.dst.include_output))
    dst = DynamicSparsity(config.dst)
    if run is not None and is_main:
        run.write_json(MODEL_FILE, {"input_shape": list(splits.input_shape),
                                    "num_classes": splits.num_classes})
    resume = run is not None and latest_checkpoint(run.path / "checkpoints") is not None
    trainer = Trainer(model, splits.train, config.train, val_set=splits.val,
                      test_set=splits.test, masks=masks, run_dir=run, callbacks=[dst])
    start = time.perf_counter()
    history = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    test = trainer.test_metrics or trainer.evaluate(splits.test)
    train_seconds = sum(float(h.get("time", 0.0)) for h in trainer.history)  # across resumes
    counted = counted_sparsity(trainer.model, names)
    summary = {
        "model": config.model, "method": config.dst.method, "seed": config.dst.seed,
        "init_seed": config.init_seed,
        "target_sparsity": config.dst.policy.target_sparsity(),
        **counted,
        "mask_density": trainer.masks.density() if trainer.masks is not None else 1.0,
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "train_accuracy": history[-1].get("train_acc") if history else None,
        "updates": len(dst.updates), "steps": trainer.step, "seconds": seconds,
        "train_seconds": train_seconds, "step_seconds": train_seconds / max(1, trainer.step),
        "world_size": trainer.dist.world_size, "device": str(trainer.device),
    }
    if run is not None and is_main:
        save_run_weights(run, trainer.model, trainer.masks, summary)
        run.write_json(SUMMARY, summary)
        if trainer.checkpoint_dir is not None:
            shutil.rmtree(trainer.checkpoint_dir, ignore_errors=True)
    return summary


def save_run_weights(run: RunDir, model: nn.Module, masks: MaskSet | None,
                     info: dict[str, Any]) -> None:
    """``final.safetensors`` (masked state_dict) and ``masks.safetensors`` into ``run``."""
    meta = {k: info[k] for k in ("model", "method", "target_sparsity") if k in info}
    save_safetensors_checkpoint(run.file("final"), dict(model.state_dict()), meta,
                                kind=WEIGHTS_KIND)
    if masks is not None:
        masks.save(run.file("masks"), meta=meta)


def load_run_model(run_dir: str | Path) -> tuple[DSTRunConfig, nn.Module, MaskSet | None]:
    """The trained model of a finished run folder: ``(config, model in eval mode, masks)``."""
    run = RunDir(run_dir)
    if not run.file(SUMMARY).exists() or not run.file("final.safetensors").exists():
        raise ValueError(f"{str(run.path)!r} is not a finished DST run folder (no "
                         f"{SUMMARY} / final.safetensors); train it with `sparseprior dst "
                         f"train --out {run.path}`")
    config = DSTRunConfig.from_dict(run.read_json("config.json"))
    shape = run.read_json(MODEL_FILE)
    model = build_seeded_model(config, tuple(shape["input_shape"]), int(shape["num_classes"]))
    state: dict[str, Tensor]
    state, _ = load_safetensors_checkpoint(run.file("final"), kind=WEIGHTS_KIND)
    model.load_state_dict(state)
    masks = MaskSet.load(run.file("masks"), model) if run.file("masks.safetensors").exists() \
        else None
    return config, model.eval(), masks
