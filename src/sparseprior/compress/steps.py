"""The compression-step registry: a new step is one module plus one ``@register_step`` line.

A step is a function ``apply(state, options) -> details`` that transforms ``state.model`` (in
place, or by assigning a new model for structural changes), may set ``state.masks`` (the pruning
masks fine-tuning keeps) and returns a JSON-able dict for the report. ``options`` is the step's
validated options dataclass (a :class:`~sparseprior.common.config.Config` subclass) built from the
recipe's ``"options"`` dict, or ``None`` for a step registered without options::

    @dataclasses.dataclass
    class ShrinkConfig(Config):
        factor: float = 0.5

    @register_step("shrink", ShrinkConfig, summary="scale every weight")
    def shrink(state: StepState, options: ShrinkConfig) -> dict:
        for p in state.model.parameters():
            p.data.mul_(options.factor)
        return {"factor": options.factor}

    compress_(model, Recipe(steps=[{"kind": "shrink", "options": {"factor": 0.9}}]), ...)

After ``apply`` the pipeline fine-tunes for the step's ``epochs`` with the one ``Trainer``
(``state.masks`` kept, plus any callbacks the step put in ``state.callbacks``), freezes
quantized / re-expressed layers and measures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from sparseprior.common.config import Config
from sparseprior.common.registry import Registry
from sparseprior.sparsity import MaskSet

__all__ = ["STEPS", "StepState", "StepType", "register_step", "step_type"]


@dataclasses.dataclass
class StepState:
    """What a step works on.

    Attributes:
        model: the model being compressed; a structural step may assign a new one.
        example_input: ``(2, *input_shape)`` input for tracing (structured pruning).
        masks: pruning masks fine-tuning keeps (``None``: no masks; a step that changes the
            layer structure sets it to ``None``).
        pruned: some step zeroed weights; fine-tuning keeps the zeros even without ``masks``.
        callbacks: factories ``trainer -> Callback`` added to this step's fine-tuning (e.g.
            gradual pruning); cleared before every step.
    """

    model: nn.Module
    example_input: Tensor
    masks: MaskSet | None = None
    pruned: bool = False
    callbacks: list[Callable[[Any], Any]] = dataclasses.field(default_factory=list)


StepApply = Callable[[StepState, Any], dict[str, Any]]
StepCheck = Callable[[Any, int], None]


@dataclasses.dataclass(frozen=True)
class StepType:
    """A registered step: its ``kind``, ``options`` class (or ``None``: takes no options), the
    ``apply`` function, a one-line ``summary`` and an optional ``check(options, epochs)`` that
    raises ``ValueError`` for combinations the options class cannot see (e.g. a gradual prune
    without fine-tuning epochs)."""

    kind: str
    options: type[Config] | None
    apply: StepApply
    summary: str = ""
    check: StepCheck | None = None

    def parse(self, options: dict[str, Any]) -> Any:
        """The validated options object for a recipe's ``options`` dict (``None`` without an
        options class; ``ValueError`` naming the bad field)."""
        if self.options is None:
            if options:
                raise ValueError(f"step {self.kind!r} takes no options, got {sorted(options)}")
            return None
        return self.options.from_dict(options)


STEPS: Registry[StepType] = Registry("step kind")


def register_step(kind: str, options: type[Config] | None = None, *, summary: str = "",
                  check: StepCheck | None = None, replace: bool = False
                  ) -> Callable[[StepApply], StepApply]:
    """Decorator registering ``apply(state, options) -> details`` as compression step ``kind``.

    ``options`` is the step's options dataclass (``None``: the step takes no options). Raises
    ``ValueError`` when ``kind`` is taken (``replace=True`` redefines it).
    """
    if options is not None and not (isinstance(options, type) and issubclass(options, Config)):
        raise TypeError(f"options for step {kind!r} must be a Config subclass or None, got "
                        f"{options!r}")

    def add(apply: StepApply) -> StepApply:
        if not callable(apply):
            raise TypeError(f"step {kind!r}: apply must be callable, got {apply!r}")
        STEPS.register(kind, StepType(kind, options, apply, summary, check), replace=replace)
        return apply

    return add


def step_type(kind: str) -> StepType:
    """The registered step ``kind`` (``ValueError`` listing the registered kinds)."""
    return STEPS.get(kind)


@register_step("finetune", summary="only fine-tune",
               check=lambda _options, epochs: _need_epochs("finetune", epochs))
def _finetune_only(state: StepState, options: None) -> dict[str, Any]:
    return {}


def _need_epochs(kind: str, epochs: int) -> None:
    if epochs == 0:
        raise ValueError(f"a {kind!r} step needs epochs >= 1")
