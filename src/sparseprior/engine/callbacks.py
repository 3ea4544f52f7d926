"""Callbacks: how methods (pruning, lottery tickets, dynamic sparse training) plug into the loop.

Order of one optimizer step inside :meth:`Trainer.fit`::

    on_train_start                                 once, after resume, before the first epoch
    on_epoch_start                                 each epoch (also a resumed, partial one)
      per batch:
        outputs = model(inputs); loss = loss_fn(outputs, targets)
        loss += sum(cb.extra_loss(trainer))        e.g. Early-Bird's L1 on BN scales
        loss.backward()
        after_backward                             dense gradients (all-reduced under DDP);
                                                   RigL scores growth here; then the trainer
                                                   masks gradients, clips, steps
        optimizer.step(); scheduler.step()         the MaskSet re-applies masks after the step
        trainer.step += 1
        after_step                                 weights updated; DST changes masks here
    on_epoch_end                                   after evaluation; trainer.log(...) adds to the
                                                   epoch record; Early-Bird compares masks here
    on_train_end                                   after the test evaluation

A callback's ``state_dict()`` (tensors, numbers, strings, lists, tuples, dicts) is stored in every
checkpoint and handed back to ``load_state_dict`` on resume (tensors arrive on the CPU).
Under DDP every rank runs every hook; decisions that change masks or stop training must be the
same on every rank (deterministic in identical weights/gradients, or broadcast).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from sparseprior.engine.trainer import Trainer


class Callback:
    """Base class: override any hook; all default to doing nothing."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first (or resumed) epoch."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Before each epoch; ``trainer.epoch`` is its 0-based index."""

    def extra_loss(self, trainer: Trainer) -> Tensor | None:
        """A scalar added to the loss before ``backward`` (``None``: nothing).

        ``trainer.batch`` holds ``(inputs, targets)`` and ``trainer.outputs`` the model output.
        """
        return None

    def after_backward(self, trainer: Trainer) -> None:
        """Gradients are in ``p.grad`` (dense, not yet masked); before ``optimizer.step()``."""

    def after_step(self, trainer: Trainer) -> None:
        """After ``optimizer.step()``, the mask re-application and ``trainer.step += 1``."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After the epoch's evaluation; ``trainer.epoch_record`` is the record being built."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After training and the test evaluation, before the final checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(after_step=lambda t: ...)``."""

    HOOKS = ("on_train_start", "on_epoch_start", "extra_loss", "after_backward", "after_step",
             "on_epoch_end", "on_train_end")

    def __init__(self, **hooks: Callable[[Trainer], Any]) -> None:
        unknown = sorted(set(hooks) - set(self.HOOKS))
        if unknown:
            raise ValueError(f"unknown hook(s) {unknown}; choose from {list(self.HOOKS)}")
        for name, fn in hooks.items():
            setattr(self, name, fn)


class WeightSnapshot(Callback):
    """Keep copies of the model's ``state_dict`` at given steps (lottery-ticket rewinding).

    ``at_steps`` counts optimizer steps; step 0 is the weights before the first step. The
    copies (CPU) are in ``snapshots[step]`` and travel in checkpoints, so a resumed run still
    has them.
    """

    def __init__(self, at_steps: Sequence[int] = (0,)) -> None:
        if any(int(s) < 0 for s in at_steps):
            raise ValueError(f"at_steps must be >= 0, got {list(at_steps)}")
        self.at_steps = sorted({int(s) for s in at_steps})
        self.snapshots: dict[int, dict[str, Tensor]] = {}

    def _take(self, trainer: Trainer) -> None:
        if trainer.step in self.at_steps and trainer.step not in self.snapshots:
            self.snapshots[trainer.step] = {k: v.detach().to("cpu").clone()
                                            for k, v in trainer.model.state_dict().items()}

    def on_train_start(self, trainer: Trainer) -> None:
        self._take(trainer)

    def after_step(self, trainer: Trainer) -> None:
        self._take(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"at_steps": list(self.at_steps), "snapshots": dict(self.snapshots)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = {int(k): dict(v) for k, v in state["snapshots"].items()}
