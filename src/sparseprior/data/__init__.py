"""Datasets as in-memory tensors, one entry point, deterministic loaders.

>>> from sparseprior.data import load_dataset, make_loader
>>> splits = load_dataset("synthetic", seed=0, n_train=100, n_test=20)
>>> x, y = next(iter(make_loader(splits.train, batch_size=32, shuffle=True, seed=0)))
>>> tuple(x.shape), tuple(y.shape)
((32, 1, 28, 28), (32,))

Names: ``"fashion-mnist"`` (default folder /usr/share/datasets/fashion-mnist, from
``apt-get install dataset-fashion-mnist``), ``"mnist"`` (IDX folder you pass as ``root``),
``"digits"`` (scikit-learn, 8x8), ``"cifar10"`` (a ``cifar-10-batches-py`` folder you pass as
``root``; nothing is downloaded) and ``"synthetic"`` (seeded Gaussian blobs).
"""

from sparseprior.data.cifar import load_cifar10_arrays, read_cifar_batch
from sparseprior.data.datasets import (
    DATASETS,
    DatasetSpec,
    DatasetSplits,
    check_dataset_spec,
    load_dataset,
)
from sparseprior.data.idx import encode_idx, parse_idx, read_idx, write_idx
from sparseprior.data.loaders import make_loader, seed_worker
from sparseprior.data.mnist import FASHION_MNIST_DEFAULT_ROOT, find_idx_files, load_idx_arrays
from sparseprior.data.synthetic import make_blobs, make_synthetic_arrays

__all__ = [
    "DATASETS",
    "check_dataset_spec",
    "FASHION_MNIST_DEFAULT_ROOT",
    "DatasetSpec",
    "DatasetSplits",
    "encode_idx",
    "find_idx_files",
    "load_cifar10_arrays",
    "load_dataset",
    "load_idx_arrays",
    "make_blobs",
    "make_loader",
    "make_synthetic_arrays",
    "parse_idx",
    "read_cifar_batch",
    "read_idx",
    "seed_worker",
    "write_idx",
]
