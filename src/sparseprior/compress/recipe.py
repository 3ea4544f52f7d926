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
from sparseprior.common.validation import check_choice, check_positive_int
from sparseprior.compress.lowrank import LowRankConfig
from sparseprior.compress.prune import PruneConfig
from sparseprior.compress.quantize import QuantSpec
from sparseprior.compress.smartexchange import SmartExchangeConfig
from sparseprior.compress.structured import StructuredConfig
from sparseprior.engine import TrainConfig


@dataclasses.dataclass
class QuantizeConfig(QuantSpec):
    """A :class:`QuantSpec` plus which layers: ``layers`` (module names; default all linear/conv
    layers) and ``include_output``."""

    layers: list[str] | None = None
    include_output: bool = True

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(bits=self.bits, scheme=self.scheme, granularity=self.granularity,
                         symmetric=self.symmetric)


STEP_OPTIONS: dict[str, type[Config] | None] = {
    "prune": PruneConfig,
    "structured": StructuredConfig,
    "lowrank": LowRankConfig,
    "smartexchange": SmartExchangeConfig,
    "quantize": QuantizeConfig,
    "finetune": None,
}


@dataclasses.dataclass
class Step(Config):
    """One recipe step: ``kind``, its ``options`` (a dict validated into the kind's config)
    and ``epochs`` of fine-tuning afterwards."""

    kind: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 0

    def validate(self) -> None:
        check_choice(self.kind, "step kind", STEP_OPTIONS)
        if not isinstance(self.options, dict):
            raise ValueError(f"step {self.kind!r}: options must be a dict, got "
                             f"{type(self.options).__name__}")
        check_positive_int(self.epochs, f"step {self.kind!r} epochs", allow_zero=True)
        cls = STEP_OPTIONS[self.kind]
        if cls is None and self.options:
            raise ValueError(f"step 'finetune' takes no options, got {sorted(self.options)}")
        if cls is not None:
            cls.from_dict(self.options)  # raises ValueError naming the bad field
        if self.kind == "finetune" and self.epochs == 0:
            raise ValueError("a 'finetune' step needs epochs >= 1")
        if self.kind == "prune" and self.options.get("schedule") == "gradual" and \
                self.epochs == 0:
            raise ValueError("a gradual 'prune' step needs epochs >= 1 (it prunes while "
                             "fine-tuning)")

    @property
    def config(self) -> Any:
        """The validated options object (``None`` for ``finetune``)."""
        cls = STEP_OPTIONS[self.kind]
        return None if cls is None else cls.from_dict(self.options)


@dataclasses.dataclass
class Recipe(Config):
    """A named list of :class:`Step` s and the fine-tuning ``train`` settings
    (``TrainConfig`` fields; ``epochs`` there is ignored: each step says its own)."""

    name: str = "recipe"
    steps: list[Any] = dataclasses.field(default_factory=list)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.steps, list) or not self.steps:
            raise ValueError("recipe steps must be a non-empty list of steps")
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
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ValueError("YAML recipes need PyYAML (pip install pyyaml); or write the "
                             "recipe as JSON") from err
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"recipe {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"recipe {str(path)!r} must hold a mapping with 'steps'")
    return Recipe.from_dict(data)
