"""Deterministic DataLoaders.

For a ``TensorDataset`` (what :func:`sparseprior.data.load_dataset` returns) batches are taken
with one fancy-index per batch instead of one ``__getitem__`` per sample plus a collate, which
is several times faster on a CPU and gives the same batches. The shuffle order depends only on
``seed``: two loaders made with the same seed yield the same sequence of batches, epoch after
epoch.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from sparseprior.common.seeding import make_generator
from sparseprior.common.validation import check_positive_int


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` that seeds Python's and NumPy's RNGs from the worker's torch seed
    (which the DataLoader derives from its seeded generator)."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(
    ds: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int | torch.Generator = 0,
    *,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``ds`` whose order is fixed by ``seed``.

    Each batch is ``(x, y)`` with ``x`` of shape ``(B, C, H, W)`` and ``y`` of shape ``(B,)``
    (``B = batch_size`` except possibly the last batch unless ``drop_last``).
    ``len(loader)`` is the number of batches per epoch.

    For a ``TensorDataset`` the loader yields whole batches by slicing (``loader.batch_size``
    is then ``None``; use ``loader.batch_sampler.batch_size``). Tensors already on a GPU work
    with ``num_workers=0`` and ``pin_memory=False``.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    num_workers = check_positive_int(num_workers, "num_workers", allow_zero=True)
    gen = make_generator(seed)
    common = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "generator": gen,
        "worker_init_fn": seed_worker if num_workers > 0 else None,
        "persistent_workers": False,
    }
    if isinstance(ds, TensorDataset):
        sampler = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
        batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
        return DataLoader(ds, sampler=batches, batch_size=None, **common)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **common)
