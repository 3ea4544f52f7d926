"""The one training loop: epochs of SGD/Adam with callbacks, masks, DDP, checkpoints and resume."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sparseprior.common.progress import progress_bar
from sparseprior.common.runs import RunDir
from sparseprior.common.seeding import seed_everything
from sparseprior.engine import checkpoint as ckpt
from sparseprior.engine.callbacks import Callback
from sparseprior.engine.config import TrainConfig
from sparseprior.engine.data import make_eval_loader, make_train_loader, start_epoch
from sparseprior.engine.distributed import (
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_buffers,
    init_distributed,
)
from sparseprior.engine.optim import build_optimizer, build_scheduler
from sparseprior.engine.state import rng_state, set_rng_state
from sparseprior.sparsity.masks import MaskSet, sparsity_stats

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]


class Trainer:
    """Train ``model`` on ``train_set`` with ``config``; the one loop every method plugs into.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to outputs; moved to the device.
        train_set: a map-style dataset of ``(input, target)`` pairs.
        config: a :class:`TrainConfig`.
        val_set: evaluated every ``config.eval_every`` epochs and at the end.
        test_set: evaluated once after training (``trainer.test_metrics``; kind ``test`` in
            ``metrics.jsonl``).
        callbacks: :class:`Callback` s, called in order.
        masks: a :class:`MaskSet` kept applied throughout (attached to model and optimizer).
        run_dir: folder for ``train_config.json``, ``metrics.jsonl`` and ``checkpoints/``
            (``None``: write nothing, no resume).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (mean over the batch).

    Attributes for callbacks: ``model`` (unwrapped), ``network`` (what is called: the DDP
    wrapper under DDP), ``optimizer``, ``scheduler``, ``masks``, ``config``, ``device``,
    ``dist`` (rank/world size), ``step`` (optimizer steps so far), ``epoch`` (0-based current
    epoch), ``batch_in_epoch``, ``steps_per_epoch``, ``total_steps``, ``batch``, ``outputs``,
    ``loss``, ``history``, ``epoch_record``, ``should_stop``.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        config: TrainConfig,
        *,
        val_set: Dataset | None = None,
        test_set: Dataset | None = None,
        callbacks: Sequence[Callback] = (),
        masks: MaskSet | None = None,
        run_dir: RunDir | str | Path | None = None,
        loss_fn: LossFn = F.cross_entropy,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        config.validate()
        if isinstance(train_set, DataLoader):
            raise TypeError("train_set must be a Dataset, not a DataLoader: the Trainer builds "
                            "its own loader (seeded per epoch for exact resume, sharded for DDP)")
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.config = config
        self.dist, self.device = init_distributed(config.device)
        if config.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size={config.batch_size} must be divisible by the world "
                             f"size {self.dist.world_size} (it is the global batch size)")
        self.model = model.to(self.device)
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        self.callbacks = list(callbacks)
        self.loss_fn = loss_fn
        run_path = run_dir.path if isinstance(run_dir, RunDir) else \
            Path(run_dir) if run_dir is not None else None
        self._run_path = run_path
        # only rank 0 writes files
        self.run_dir: RunDir | None = None
        if run_path is not None and self.dist.is_main:
            self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_path)

        self.loader = make_train_loader(
            train_set, batch_size=config.batch_size // self.dist.world_size, seed=config.seed,
            rank=self.dist.rank, world_size=self.dist.world_size,
            num_workers=config.num_workers, drop_last=config.drop_last,
            pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(train_set)} samples) gives no batch of "
                             f"size {config.batch_size} with drop_last=True")
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)

        self.optimizer = build_optimizer(self.model.parameters(), config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch,
                                         self.total_steps)
        self.network: nn.Module = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.masks: MaskSet | None = None
        if masks is not None:
            self.set_masks(masks)
        for name, data in (("train_set", train_set), ("val_set", val_set),
                           ("test_set", test_set)):
            check_dataset_finite(data, name)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.epoch_record: dict[str, Any] = {}
        self.test_metrics: dict[str, float] | None = None
        self.should_stop = False
        self.batch: tuple[Any, Any] | None = None
        self.outputs: Tensor | None = None
        self.loss: Tensor | None = None

    # ------------------------------------------------------------------ masks, logging

    def set_masks(self, masks: MaskSet | None) -> None:
        """Replace the trainer's masks (``None``: train dense). Attaches them to the model and
        optimizer, broadcasts rank 0's masks under DDP, and zeroes the masked weights."""
        if self.masks is not None:
            self.masks.detach()
        self.masks = masks
        if masks is None:
            return
        masks.check_compatible(self.model)
        masks.to(next(self.model.parameters()).device)
        masks.broadcast_(src=0)
        masks.attach(self.model, self.optimizer)

    def log(self, **metrics: Any) -> None:
        """Add values to the current epoch's record (history and ``metrics.jsonl``)."""
        self.epoch_record.update(metrics)

    def density(self) -> float:
        """Density of the masked weights (or of the default prunable weights), counted."""
        if self.masks is not None:
            return self.masks.stats(self.model).density
        return sparsity_stats(self.model).density

    # ------------------------------------------------------------------ training

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` (or ``max_steps``, or a callback sets ``should_stop``).

        With ``resume=True`` continue from the run folder's latest checkpoint (if any) exactly
        where it stopped. Returns the history: one dict per epoch with ``epoch`` (1-based),
        ``step``, ``train_loss``, ``train_acc``, ``val_loss``/``val_acc`` (when evaluated),
        ``lr``, ``time`` (seconds) and ``density``, plus anything callbacks ``log``.
        """
        if resume and self._run_path is not None and \
                ckpt.latest_checkpoint(self._run_path / "checkpoints") is not None:
            self.load_checkpoint()
            self._truncate_metrics()
        else:
            if resume:
                log.info("resume=True but no checkpoint found; starting from scratch")
            seed_everything(self.config.seed)
        if self.run_dir is not None:
            self.run_dir.write_json("train_config.json", self.config.to_dict())
        if self.step >= self.total_steps or self.epoch >= self.config.epochs:
            return self.history
        self.should_stop = False
        self._call("on_train_start")
        with progress_bar(self.config.progress if self.dist.is_main else False) as progress:
            task = progress.add_task("train", total=self.total_steps, completed=self.step,
                                     status="")
            while (self.epoch < self.config.epochs and self.step < self.total_steps
                   and not self.should_stop):
                self._run_epoch(progress, task)
        if self.test_set is not None:
            self.test_metrics = self.evaluate(self.test_set)
            self._log_metrics({"kind": "test", "step": self.step, **self.test_metrics})
        self._call("on_train_end")
        if self._run_path is not None:
            self.save_checkpoint()
        return self.history

    def _run_epoch(self, progress: Any, task: Any) -> None:
        start = time.perf_counter()
        self._call("on_epoch_start")
        start_epoch(self.loader, self.epoch, skip_batches=self.batch_in_epoch)
        self.network.train()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, correct, n, n_acc
        for inputs, targets in self.loader:
            self._train_step(inputs, targets, sums)
            fields = {"status": f"loss {float(self.loss):.4f}"} if self.step % 10 == 0 else {}
            progress.update(task, advance=1, **fields)
            if self.config.log_every and self.step % self.config.log_every == 0:
                self._log_metrics({"kind": "step", "step": self.step, "epoch": self.epoch + 1,
                                   "loss": float(self.loss), "lr": self.lr})
            stop = self.step >= self.total_steps or self.should_stop
            if self.dist.distributed:
                stop = any_rank(stop, self.device)
            if stop:
                break
        self._end_epoch(sums, time.perf_counter() - start)

    def _train_step(self, inputs: Any, targets: Any, sums: Tensor) -> None:
        inputs = _to_device(inputs, self.device)
        targets = _to_device(targets, self.device)
        self.batch = (inputs, targets)
        outputs = self.network(inputs)
        self.outputs = outputs
        task_loss = self.loss_fn(outputs, targets)
        loss = task_loss
        for cb in self.callbacks:
            extra = cb.extra_loss(self)
            if extra is not None:
                loss = loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.loss = task_loss.detach()
        self._check_loss(loss)
        self._call("after_backward")
        if self.masks is not None:
            self.masks.mask_grads_()
        if self.config.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.batch_in_epoch += 1
        with torch.no_grad():
            n = _batch_len(targets)
            sums[0] += self.loss.double() * n
            sums[2] += n
            correct = _correct(outputs.detach(), targets)
            if correct is not None:
                sums[1] += correct
                sums[3] += n
        self._call("after_step")

    def _end_epoch(self, sums: Tensor, seconds: float) -> None:
        all_reduce_sum(sums)
        loss_sum, correct, n, n_acc = (float(v) for v in sums.tolist())
        completed = self.batch_in_epoch >= self.steps_per_epoch
        last = (self.epoch + 1 >= self.config.epochs or self.step >= self.total_steps
                or self.should_stop)
        self.epoch_record = {
            "epoch": self.epoch + 1, "step": self.step,
            "train_loss": loss_sum / n if n else math.nan,
            "train_acc": correct / n_acc if n_acc else math.nan,
            "lr": self.lr,
        }
        every = self.config.eval_every
        if self.val_set is not None and (last or (every and (self.epoch + 1) % every == 0)):
            metrics = self.evaluate(self.val_set)
            self.epoch_record.update(val_loss=metrics["loss"], val_acc=metrics["accuracy"])
        self._call("on_epoch_end")
        if self.dist.distributed:  # a stop decided on any rank stops every rank
            self.should_stop = any_rank(self.should_stop, self.device)
        self.check_weights_finite(f"at the end of epoch {self.epoch + 1}")
        self.epoch_record.update(time=seconds, density=self.density())
        record = dict(self.epoch_record)
        self.history.append(record)
        self._log_metrics({"kind": "epoch", **record})
        log.info("epoch %d step %d: %s", record["epoch"], self.step,
                 {k: v for k, v in record.items() if k not in ("epoch", "step")})
        if completed:
            self.epoch += 1
            self.batch_in_epoch = 0
        every_ck = self.config.checkpoint_every
        if self._run_path is not None and completed and every_ck and self.epoch % every_ck == 0:
            self.save_checkpoint()

    @property
    def lr(self) -> float:
        """Current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _call(self, hook: str) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self)

    def _log_metrics(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None:
            self.run_dir.log_metrics(record)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, data: Dataset | DataLoader, *, batch_size: int | None = None
                 ) -> dict[str, float]:
        """Mean loss and accuracy (``nan`` unless outputs are ``(N, C)`` logits and targets
        ``(N,)`` class indices) over ``data``.

        A ``Dataset`` is split across DDP ranks without duplicates (and read without touching the
        global RNG); a ``DataLoader`` is taken to yield this rank's share. Sums are all-reduced,
        so every rank gets the global result; under DDP call it on every rank.
        """
        if isinstance(data, DataLoader):
            loader = data
        else:
            size = batch_size or self.config.eval_batch_size or self.config.batch_size
            loader = make_eval_loader(data, batch_size=size, rank=self.dist.rank,
                                      world_size=self.dist.world_size,
                                      num_workers=self.config.num_workers)
        broadcast_buffers(self.model)
        was_training = self.model.training
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        try:
            for inputs, targets in loader:
                inputs = _to_device(inputs, self.device)
                targets = _to_device(targets, self.device)
                outputs = self.model(inputs)
                n = _batch_len(targets)
                sums[0] += self.loss_fn(outputs, targets).double() * n
                sums[2] += n
                correct = _correct(outputs, targets)
                if correct is not None:
                    sums[1] += correct
                    sums[3] += n
        finally:
            self.model.train(was_training)
        all_reduce_sum(sums)
        loss_sum, correct, n, n_acc = (float(v) for v in sums.tolist())
        return {"loss": loss_sum / n if n else math.nan,
                "accuracy": correct / n_acc if n_acc else math.nan}

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, scheduler, masks, RNG,
        callbacks, progress and history."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "masks": self.masks.state_dict() if self.masks is not None else None,
            "callbacks": {self._cb_key(i, cb): cb.state_dict()
                          for i, cb in enumerate(self.callbacks)},
            "rng": rng_state(),
            "progress": {"step": self.step, "epoch": self.epoch,
                         "batch_in_epoch": self.batch_in_epoch},
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (``ValueError`` if it does not fit)."""
        # masks first: changing a mask zeroes weights/optimizer state that are loaded next
        if state["masks"] is not None:
            if self.masks is None:
                self.set_masks(MaskSet(state["masks"]))
            else:
                self.masks.load_state_dict(state["masks"])
        elif self.masks is not None:
            raise ValueError("the checkpoint was trained without masks but this Trainer has "
                             "masks; pass masks=None to resume it")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ValueError(f"the checkpoint does not fit this model/optimizer ({first}); "
                             "resume with the settings that wrote it") from None
        self.scheduler.load_state_dict(state["scheduler"])
        saved = state["callbacks"]
        keys = [self._cb_key(i, cb) for i, cb in enumerate(self.callbacks)]
        if sorted(saved) != sorted(keys):
            raise ValueError(f"checkpoint callbacks {sorted(saved)} differ from this Trainer's "
                             f"{sorted(keys)}; pass the same callbacks to resume")
        for key, cb in zip(keys, self.callbacks, strict=True):
            cb.load_state_dict(saved[key])
        set_rng_state(state["rng"])
        progress = state["progress"]
        self.step, self.epoch = int(progress["step"]), int(progress["epoch"])
        self.batch_in_epoch = int(progress["batch_in_epoch"])
        self.history = list(state["history"])

    @staticmethod
    def _cb_key(index: int, cb: Callback) -> str:
        return f"{index}:{type(cb).__name__}"

    @property
    def checkpoint_dir(self) -> Path | None:
        return self._run_path / "checkpoints" if self._run_path is not None else None

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint to ``<run_dir>/checkpoints/`` (see :mod:`.checkpoint`).

        Under DDP call it on every rank: rank 0 writes, the others wait. Returns the
        ``.safetensors`` path on rank 0, ``None`` elsewhere."""
        folder = self.checkpoint_dir
        if folder is None:
            raise ValueError("save_checkpoint needs a run_dir; pass run_dir=... to the Trainer")
        path = None
        self.check_weights_finite("before writing a checkpoint")
        if self.dist.distributed:
            broadcast_buffers(self.model)
        if self.dist.is_main:
            path = ckpt.save_checkpoint(
                folder, self.state_dict(), self.config.to_dict(), step=self.step,
                meta={"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
                keep=self.config.keep_checkpoints)
        barrier()
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Load ``path`` (default: the run folder's latest checkpoint) into this trainer."""
        if path is None:
            folder = self.checkpoint_dir
            path = ckpt.latest_checkpoint(folder) if folder is not None else None
            if path is None:
                raise ValueError(f"no checkpoint to load in {str(folder)!r}")
        state, header = ckpt.load_checkpoint(path)
        saved = header.get("config", {})
        differ = sorted(k for k, v in self.config.to_dict().items() if saved.get(k, v) != v)
        if differ:
            log.warning("resuming with a config that differs from the checkpoint's in %s",
                        differ)
        bad = [k for k, v in state["model"].items()
               if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"checkpoint {str(path)!r} holds NaN/inf values in {bad[:5]}; it is "
                             "corrupt or from a diverged run: delete it (or the run folder) and "
                             "start again")
        self.load_state_dict(state)

    # ------------------------------------------------------------------ divergence

    def _check_loss(self, loss: Tensor) -> None:
        """Raise :class:`DivergenceError` on a non-finite loss (one host sync per step)."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        inputs = self.batch[0] if self.batch is not None else None
        cause = ("the input batch holds NaN/inf values: clean the data"
                 if torch.is_tensor(inputs) and not torch.isfinite(inputs).all() else
                 f"lower the learning rate (lr={self.config.lr:g}) or clip gradients "
                 "(grad_clip_norm)")
        raise DivergenceError(f"training diverged at step {self.step + 1} (loss "
                              f"{float(loss.detach().reshape(-1)[0])}); {cause}")

    def check_weights_finite(self, when: str) -> None:
        """Raise :class:`DivergenceError` if any parameter or buffer is NaN/inf."""
        for name, value in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise DivergenceError(f"training diverged: {name} holds NaN/inf values {when}; "
                                      f"lower the learning rate (lr={self.config.lr:g})")

    def _truncate_metrics(self) -> None:
        """Drop metric records written after the checkpoint we resumed from."""
        if self.run_dir is None:
            return
        records = self.run_dir.read_metrics()
        kept = [r for r in records if int(r.get("step", 0)) <= self.step]
        if len(kept) != len(records):
            self.run_dir.write_text("metrics.jsonl",
                                    "".join(json.dumps(r) + "\n" for r in kept))


# ---------------------------------------------------------------------- helpers


class DivergenceError(ValueError):
    """Training produced a non-finite loss or weights (the CLI prints it and exits with 2)."""


def check_dataset_finite(data: Any, name: str) -> None:
    """Refuse in-memory datasets (``TensorDataset``-like) whose floating tensors hold NaN/inf."""
    for i, tensor in enumerate(getattr(data, "tensors", ()) or ()):
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ValueError(f"{name} tensor {i} holds {bad} NaN/inf value(s); clean the "
                                 "data before training")


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _batch_len(targets: Any) -> int:
    if isinstance(targets, Tensor):
        return int(targets.shape[0]) if targets.ndim else 1
    return len(targets)


def _correct(outputs: Any, targets: Any) -> Tensor | None:
    """Number of correct argmax predictions, or ``None`` when not a classification batch."""
    if (isinstance(outputs, Tensor) and isinstance(targets, Tensor) and outputs.ndim == 2
            and targets.ndim == 1 and not targets.dtype.is_floating_point
            and outputs.shape[0] == targets.shape[0]):
        return (outputs.argmax(dim=1) == targets).sum().double()
    return None
