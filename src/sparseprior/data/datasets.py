"""One entry point for datasets: :func:`load_dataset` -> :class:`DatasetSplits`.

Every dataset goes through the same pipeline:

1. the loader returns the official train and test splits (uint8 images or floats in [0, 1]);
2. images become float32 in [0, 1];
3. per-channel mean/std come from the *whole official training split* (fixed constants for
   MNIST, Fashion-MNIST and CIFAR-10; computed for digits), so they never depend on the seed;
4. ``val_size`` images are carved from the training split with ``seed``;
5. ``subset`` keeps that many of the remaining training images (chosen with ``seed``);
6. ``x = (x - mean) / std`` per channel, and the splits become in-memory ``TensorDataset`` s.

The validation set depends only on ``(seed, val_size)``, not on ``subset``; the test split is
never touched (for ``digits`` it is a fixed stratified split that ignores ``seed``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from sparseprior.common.seeding import make_generator
from sparseprior.common.validation import check_choice, check_positive_int
from sparseprior.data.cifar import load_cifar10_arrays
from sparseprior.data.mnist import FASHION_MNIST_CLASSES, MNIST_CLASSES, load_idx_arrays
from sparseprior.data.synthetic import make_synthetic_arrays

#: Seed of the fixed train/test split of scikit-learn's digits (independent of ``seed``).
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360


@dataclasses.dataclass
class DatasetSplits:
    """In-memory splits of one dataset.

    ``train``/``val``/``test`` are ``TensorDataset(x, y)`` with ``x`` float32 of shape
    ``(N, *input_shape)`` (normalised) and ``y`` int64 of shape ``(N,)`` in
    ``0..num_classes-1``. ``val`` is ``None`` when ``val_size == 0``. ``mean``/``std`` are the
    per-channel statistics used (all 0/1 when not normalised).
    """

    name: str
    train: TensorDataset
    val: TensorDataset | None
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()

    @property
    def sizes(self) -> dict[str, int]:
        """Number of examples per split, e.g. ``{"train": 60000, "val": 0, "test": 10000}``."""
        return {"train": len(self.train), "val": 0 if self.val is None else len(self.val),
                "test": len(self.test)}

    def to(self, device: str | torch.device) -> DatasetSplits:
        """A copy with every tensor on ``device`` (e.g. to batch on a GPU with no copies)."""
        def move(ds: TensorDataset | None) -> TensorDataset | None:
            return None if ds is None else TensorDataset(*(t.to(device) for t in ds.tensors))
        return dataclasses.replace(self, train=move(self.train), val=move(self.val),
                                   test=move(self.test))

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (name, sizes, shapes, classes, stats)."""
        return {"name": self.name, "sizes": self.sizes, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "mean": list(self.mean), "std": list(self.std)}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset.

    ``loader(root, seed, **options)`` returns ``{"x_train", "y_train", "x_test", "y_test"}``
    (images ``(N, C, H, W)``, uint8 or float in [0, 1]; labels ``(N,)``) and optionally
    ``"classes"``. ``mean``/``std`` are fixed per-channel stats, or ``None`` to compute them
    from the training split; ``normalize=False`` in the spec means never normalise.
    """

    loader: Callable[..., dict[str, Any]]
    num_classes: int | None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    normalize: bool = True
    needs_root: bool = False
    classes: tuple[str, ...] = ()
    description: str = ""


def _idx_loader(name: str) -> Callable[..., dict[str, Any]]:
    def load(root: str | Path | None, seed: int) -> dict[str, Any]:
        arrays = load_idx_arrays(name, root)
        for k in ("x_train", "x_test"):
            arrays[k] = arrays[k][:, None]  # (N, 1, H, W)
        return arrays
    return load


def _load_cifar10(root: str | Path | None, seed: int) -> dict[str, Any]:
    if root is None:
        raise ValueError("dataset 'cifar10' needs root=: the 'cifar-10-batches-py' folder "
                         "(torchvision's on-disk format) or the folder containing it; "
                         "nothing is downloaded")
    return load_cifar10_arrays(root)


def _load_digits(root: str | Path | None, seed: int,
                 test_size: int = DIGITS_TEST_SIZE) -> dict[str, Any]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    test_size = check_positive_int(test_size, "test_size")
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    if test_size >= len(y):
        raise ValueError(f"test_size must be < {len(y)} (the number of digits), got {test_size}")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y,
                                              random_state=DIGITS_SPLIT_SEED)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def _load_synthetic(root: str | Path | None, seed: int, **options: Any) -> dict[str, Any]:
    arrays: dict[str, Any] = make_synthetic_arrays(seed=seed, **options)
    arrays["num_classes"] = int(options.get("num_classes", 10))
    return arrays


#: The dataset registry: name -> :class:`DatasetSpec`. Add a dataset by adding an entry.
DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        _idx_loader("fashion-mnist"), 10, (0.2860,), (0.3530,), classes=FASHION_MNIST_CLASSES,
        description="Fashion-MNIST 60k/10k 1x28x28; default root "
                    "/usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)"),
    "mnist": DatasetSpec(
        _idx_loader("mnist"), 10, (0.1307,), (0.3081,), needs_root=True, classes=MNIST_CLASSES,
        description="MNIST 60k/10k 1x28x28 from a folder of IDX files (root= required)"),
    "digits": DatasetSpec(
        _load_digits, 10, classes=MNIST_CLASSES,
        description="scikit-learn digits 1437/360 1x8x8, fixed stratified split"),
    "cifar10": DatasetSpec(
        _load_cifar10, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), needs_root=True,
        description="CIFAR-10 50k/10k 3x32x32 from a 'cifar-10-batches-py' folder (root=)"),
    "synthetic": DatasetSpec(
        _load_synthetic, None, normalize=False,
        description="seeded Gaussian blobs in image shape (options: n_train, n_test, "
                    "num_classes, image_shape, class_sep, noise)"),
}


def _to_float_images(x: Any, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.ndim != 4:
        raise ValueError(f"dataset {name!r}: images must be (N, C, H, W), got {tuple(t.shape)}")
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def _to_labels(y: Any) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(y)) if isinstance(y, np.ndarray) else y
    return t.long()


def _check_labels(name: str, y_train: torch.Tensor, y_test: torch.Tensor, num_classes: int,
                  n_train: int, n_test: int) -> None:
    for split, y, n in (("train", y_train, n_train), ("test", y_test, n_test)):
        if y.shape != (n,):
            raise ValueError(f"dataset {name!r}: {split} has {n} images but labels of shape "
                             f"{tuple(y.shape)}")
        if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"dataset {name!r}: {split} labels must be in 0..{num_classes - 1}, "
                             f"got {int(y.min())}..{int(y.max())}")


def _split_sizes(n: int, val_size: int | float, subset: int | None) -> tuple[int, int | None]:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer)):
        raise TypeError(f"val_size must be an int (count) or a float fraction in [0, 1), "
                        f"got {type(val_size).__name__} {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise ValueError(f"val_size as a fraction must be in [0, 1), got {val_size}")
        n_val = int(round(val_size * n))
    else:
        n_val = int(val_size)
    if not 0 <= n_val < n:
        raise ValueError(f"val_size={val_size!r} must leave training data: allowed 0..{n - 1} "
                         f"images (the training split has {n})")
    if subset is not None:
        subset = check_positive_int(subset, "subset")
        if subset > n - n_val:
            raise ValueError(f"subset={subset} exceeds the {n - n_val} training images left "
                             f"after val_size={val_size!r}; allowed 1..{n - n_val} or None")
    return n_val, subset


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xd = x.double()
    mean = xd.mean(dim=(0, 2, 3))
    std = xd.std(dim=(0, 2, 3)).clamp_min(1e-8)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _check_options(name: str, loader: Callable[..., Any], options: dict[str, Any]) -> None:
    if not options:
        return
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in ("root", "seed")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"dataset {name!r} does not take option(s) {unknown}; "
                         f"allowed: {allowed or 'none'}")


def check_dataset_spec(name: str, options: Any, *, subset: int | None = None,
                       val_size: int | float = 0) -> None:
    """Raise ``ValueError`` unless :func:`load_dataset` would accept these arguments (checked
    before any file is read, so a config fails fast)."""
    check_choice(name, "dataset", DATASETS)
    if not isinstance(options, dict):
        raise ValueError(f"dataset_options must be a dict, got {options!r}")
    _check_options(name, DATASETS[name].loader, options)
    if subset is not None:
        check_positive_int(subset, "subset")
    if isinstance(val_size, int):
        check_positive_int(val_size, "val_size", allow_zero=True)


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    val_size: int | float = 0,
    subset: int | None = None,
    seed: int = 0,
    normalize: bool = True,
    **options: Any,
) -> DatasetSplits:
    """Load dataset ``name`` (a key of :data:`DATASETS`) into in-memory splits.

    Args:
        name: ``"fashion-mnist"``, ``"mnist"``, ``"digits"``, ``"cifar10"`` or ``"synthetic"``.
        root: folder of the files; ``None`` uses the default (Fashion-MNIST only has one).
        val_size: images carved from the training split for validation: an int count or a
            float fraction in [0, 1); 0 means ``val=None``.
        subset: keep only this many training images (after carving ``val``); ``None`` = all.
        seed: fixes the validation carve, the subset and synthetic data.
        normalize: standardise each channel with the dataset's mean/std.
        **options: dataset-specific options (``synthetic``: ``n_train``, ``n_test``,
            ``num_classes``, ``image_shape``, ``class_sep``, ``noise``; ``digits``:
            ``test_size``).

    Returns:
        :class:`DatasetSplits`; e.g. Fashion-MNIST gives ``train`` x of shape
        ``(60000 - n_val, 1, 28, 28)``, ``test`` ``(10000, 1, 28, 28)``.

    Raises ``ValueError`` for an unknown name, missing files (saying which and how to get
    them), corrupt files or bad sizes.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset name={name!r} is unknown; allowed: {sorted(DATASETS)}")
    spec = DATASETS[name]
    _check_options(name, spec.loader, options)
    seed = int(seed)
    raw = spec.loader(root, seed, **options)

    x_pool = _to_float_images(raw["x_train"], name)
    y_pool = _to_labels(raw["y_train"])
    x_test = _to_float_images(raw["x_test"], name)
    y_test = _to_labels(raw["y_test"])
    n_val, subset = _split_sizes(len(y_pool), val_size, subset)
    num_classes = int(spec.num_classes or raw["num_classes"])
    _check_labels(name, y_pool, y_test, num_classes, len(x_pool), len(x_test))

    channels = x_pool.shape[1]
    if normalize and spec.normalize:
        mean, std = (spec.mean, spec.std) if spec.mean is not None else _channel_stats(x_pool)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels

    def make(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
        return TensorDataset(_normalize(x, mean, std) if normalize and spec.normalize else x, y)

    if n_val == 0 and subset is None:
        train, val = make(x_pool, y_pool), None
    else:
        perm = torch.randperm(len(y_pool), generator=make_generator(seed))
        val_idx = perm[:n_val].sort().values
        train_idx = perm[n_val:] if subset is None else perm[n_val:n_val + subset]
        train_idx = train_idx.sort().values
        train = make(x_pool[train_idx], y_pool[train_idx])
        val = make(x_pool[val_idx], y_pool[val_idx]) if n_val > 0 else None
    test = make(x_test, y_test)
    classes = tuple(raw.get("classes", ())) or spec.classes
    return DatasetSplits(name=name, train=train, val=val, test=test, num_classes=num_classes,
                         input_shape=tuple(int(s) for s in x_pool.shape[1:]),
                         mean=tuple(mean), std=tuple(std), classes=classes)
