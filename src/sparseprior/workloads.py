"""Workloads: which registry model is trained on which dataset (:class:`ModelDataConfig`).

It sits above ``models`` and ``data`` and beside the engine: the method pillars (``tickets``,
``dst``) import it, the engine never does (the training loop takes a model and datasets, not
their names), and ``models`` never import ``data``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sparseprior.common.config import Config
from sparseprior.data import DatasetSplits, check_dataset_spec, load_dataset
from sparseprior.models import check_model_spec


@dataclasses.dataclass
class ModelDataConfig(Config):
    """The model and data part of an experiment config; subclasses add the method's fields.

    Attributes:
        model: a key of :data:`sparseprior.models.MODELS` (``lenet300``, ``lenet5``, ...).
        model_options: extra keywords of the model builder (``{"hidden": [256, 256]}``).
        dataset: a key of :data:`sparseprior.data.DATASETS`.
        dataset_options: dataset-specific options of :func:`~sparseprior.data.load_dataset`.
        data_root: dataset folder (``None``: the dataset's default).
        subset: keep this many training images (``None``: all).
        val_size: training images held out for validation (0: none).
    """

    model: str = "lenet300"
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "fashion-mnist"
    dataset_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_root: str | None = None
    subset: int | None = None
    val_size: int = 0

    def validate(self) -> None:
        check_model_spec(self.model, self.model_options)
        check_dataset_spec(self.dataset, self.dataset_options, subset=self.subset,
                           val_size=self.val_size)

    def load_splits(self, seed: int) -> DatasetSplits:
        """The dataset with ``subset`` and ``val_size`` applied; ``seed`` fixes both carves."""
        return load_dataset(self.dataset, self.data_root, val_size=self.val_size,
                            subset=self.subset, seed=seed, **self.dataset_options)
