"""Compression recipes: an ordered list of validated steps, loadable from JSON or YAML.

A recipe file::

    {"name": "lenet300-storage",
     "train": {"epochs": 1, "optimizer": "adam", "lr": 0.0005, "batch_size": 128},
     "steps": [
        {"kind": "prune", "options": {"sparsity": 0.9, "schedule": "gradual"}, "epochs": 2},
        {"kind": "quantize", "options": {"bits": 4, "scheme": "uniform"}, "epochs": 1}
     ]}

Step kinds and their option dataclasses (every field optional, validated):

==============  =====================================================  =======================
kind            what it does                                           options
==============  =====================================================  =======================
prune           unstructured magnitude pruning (one-shot/gradual)       :class:`PruneConfig`
structured      remove neurons/channels -> smaller dense model         :class:`StructuredConfig`
lowrank         truncated-SVD factorization into two layers            :class:`LowRankConfig`
smartexchange   ``W ~= Ce @ B``, Ce sparse powers of two               :class:`SmartExchangeConfig`
quantize        k-bit uniform / power-of-two weights (PTQ, QAT)        :class:`QuantizeConfig`
finetune        only fine-tune                                          (none)
==============  =====================================================  =======================

``epochs`` fine-tunes after the step with the one ``Trainer`` (``train`` gives the
``TrainConfig`` fields; pruning masks are kept; after ``quantize`` this is QAT with a
straight-through estimator; after ``smartexchange`` the ``Ce @ B`` form is kept).
YAML needs PyYAML (used when installed); JSON always works.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sparseprior.common.config import Config
from sparseprior.common.validation import check_positive_int
from sparseprior.compress import (  # noqa: F401  (importing them registers the steps)
    lowrank,
    prune,
    smartexchange,
    structured,
)
from sparseprior.compress.quantize import QuantizeConfig
from sparseprior.compress.steps import STEPS, StepType
from sparseprior.engine import TrainConfig

__all__ = ["QuantizeConfig", "Recipe", "Step", "load_recipe"]


@dataclasses.dataclass
class Step(Config):
    """One recipe step: ``kind`` (a registered step, see
    :func:`~sparseprior.compress.steps.register_step`), its ``options`` (a dict validated into
    the kind's options class) and ``epochs`` of fine-tuning afterwards."""

    kind: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 0

    def validate(self) -> None:
        entry = self.step_type
        if not isinstance(self.options, dict):
            raise ValueError(f"step {self.kind!r}: options must be a dict, got "
                             f"{type(self.options).__name__}")
        check_positive_int(self.epochs, f"step {self.kind!r} epochs", allow_zero=True)
        options = entry.parse(self.options)  # raises ValueError naming the bad field
        if entry.check is not None:
            entry.check(options, self.epochs)

    @property
    def step_type(self) -> StepType:
        """The registered step (``ValueError`` listing the registered kinds)."""
        if not isinstance(self.kind, str):
            raise ValueError(f"step kind must be a string, got {self.kind!r}; choose from "
                             f"{', '.join(STEPS)}")
        return STEPS.get(self.kind)

    @property
    def config(self) -> Any:
        """The validated options object (``None`` for a step without options)."""
        return self.step_type.parse(self.options)


@dataclasses.dataclass
class Recipe(Config):
    """A named list of :class:`Step` s and the fine-tuning ``train`` settings
    (``TrainConfig`` fields; ``epochs`` there is ignored: each step says its own)."""

    name: str = "recipe"
    steps: list[Any] = dataclasses.field(default_factory=list)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"recipe name must be a string, got {self.name!r}")
        if not isinstance(self.steps, list) or not self.steps:
            raise ValueError("recipe steps must be a non-empty list of steps")
        if not isinstance(self.train, dict):
            raise ValueError(f"recipe train must be a mapping of TrainConfig fields, got "
                             f"{self.train!r}")
        self.steps = [s if isinstance(s, Step) else _step(s, i) for i, s in
                      enumerate(self.steps)]
        self.train_config(1)
        kinds = [s.kind for s in self.steps]
        if "smartexchange" in kinds and "lowrank" in kinds[kinds.index("smartexchange"):]:
            raise ValueError("'lowrank' after 'smartexchange' has nothing left to factorize")

    def train_config(self, epochs: int) -> TrainConfig:
        """The fine-tuning ``TrainConfig`` with ``epochs``."""
        fields = {"progress": False, "eval_every": 0, "log_every": 0, **self.train,
                  "epochs": epochs}
        return TrainConfig.from_dict(fields)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "train": dict(self.train),
                "steps": [dataclasses.asdict(s) for s in self.steps]}


def _step(raw: Any, index: int) -> Step:
    if not isinstance(raw, dict):
        raise ValueError(f"steps[{index}] must be a dict with 'kind', got {raw!r}")
    try:
        return Step.from_dict(raw)
    except TypeError as err:
        raise ValueError(f"steps[{index}]: {err}") from err


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from ``.json`` or ``.yaml``/``.yml`` (PyYAML needed for YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"recipe file {str(path)!r} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"recipe {str(path)!r} cannot be read as UTF-8 text: {err}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ValueError("YAML recipes need PyYAML (pip install pyyaml); or write the "
                             "recipe as JSON") from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = " ".join(str(err).split())
            raise ValueError(f"recipe {str(path)!r} is not valid YAML: {first}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"recipe {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {str(path)!r} must hold a mapping with 'steps'")
    return Recipe.from_dict(data)
