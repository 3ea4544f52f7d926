"""Data loaders whose order is a pure function of ``(seed, epoch)``, so resume is exact."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded, ``set_epoch``) that can start part-way into an epoch.

    Epoch ``e`` uses the permutation of ``torch.randperm(n, seed + e)`` and rank ``r`` takes
    every ``num_replicas``-th index from position ``r``; so ``W`` ranks with per-rank batch
    ``B/W`` see, together, exactly the single-process batches of size ``B``.
    ``set_start(k)`` skips this rank's first ``k`` samples of the epoch (resume mid-epoch).
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = max(0, int(start))

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def make_train_loader(dataset: Dataset, *, batch_size: int, seed: int, rank: int,
                      world_size: int, num_workers: int = 0, drop_last: bool = False,
                      pin_memory: bool = False) -> DataLoader:
    """Shuffled loader over this rank's share; ``loader.sampler`` is a :class:`ResumableSampler`.

    The loader has a private ``generator`` (worker base seeds), so iterating it never draws from
    the global torch RNG; call :func:`start_epoch` before each epoch.
    """
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                               seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory, generator=torch.Generator())


def start_epoch(loader: DataLoader, epoch: int, *, skip_batches: int = 0) -> None:
    """Set ``loader`` (from :func:`make_train_loader`) to epoch ``epoch``'s order, skipping the
    first ``skip_batches`` batches; seeds its worker generator from ``(seed, epoch)``."""
    sampler = loader.sampler
    if not isinstance(sampler, ResumableSampler):
        raise TypeError("start_epoch needs a loader made by make_train_loader")
    sampler.set_epoch(epoch)
    sampler.set_start(skip_batches * (loader.batch_size or 1))
    if loader.generator is not None:
        loader.generator.manual_seed((sampler.seed * 1_000_003 + epoch) % 2**63)


def make_eval_loader(dataset: Dataset, *, batch_size: int, rank: int = 0, world_size: int = 1,
                     num_workers: int = 0) -> DataLoader:
    """In-order loader over this rank's :func:`shard`; never touches the global torch RNG."""
    return DataLoader(shard(dataset, rank, world_size), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, generator=torch.Generator())


def shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """This rank's slice ``rank::world_size`` of ``dataset`` (no padding, no duplicates)."""
    if world_size == 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), world_size))  # type: ignore[arg-type]
