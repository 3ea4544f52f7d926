"""CIFAR-10 from a folder the user supplies, in torchvision's on-disk format.

Nothing is downloaded. The user points ``root`` at the ``cifar-10-batches-py`` folder (the one
inside the official ``cifar-10-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html,
and the one torchvision's ``CIFAR10(root, download=True)`` leaves under ``root``) or at the
folder that contains it. It must hold::

    data_batch_1 ... data_batch_5   10000 training images each
    test_batch                      10000 test images
    batches.meta                    the class names (optional)

Each batch is a pickled dict with ``data`` (a ``(10000, 3072)`` uint8 array: 1024 red, then
1024 green, then 1024 blue values of a row-major 32x32 image) and ``labels`` (10000 ints 0..9).

Pickle is the official format. Pickles can run code when loaded, so this module (1) checks the
folder's file names and sizes before opening anything and (2) unpickles with a restricted
unpickler that only lets through the handful of NumPy / codecs callables an array needs; any
other global in the file is rejected with a ``ValueError``. Only use data from a source you trust.
"""

from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_META_FILE = "batches.meta"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
#: A real batch is ~31 MB; anything far above that is not a CIFAR batch.
_MAX_BATCH_BYTES = 64 * 2**20


def _numpy_core() -> Any:
    try:
        from numpy._core import multiarray, numeric  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray, numeric = _numpy_core()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the NumPy-array globals in :func:`_allowed_globals`."""

    def __init__(self, fh: Any, source: str) -> None:
        super().__init__(fh, encoding="latin1")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise ValueError(f"CIFAR file {self._source!r} refers to {module}.{name}, which a "
                             f"CIFAR batch never needs; refusing to load it") from None


def safe_unpickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only NumPy arrays, dicts, lists, strings and numbers."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            return _RestrictedUnpickler(fh, str(path)).load()
        except ValueError:
            raise
        except Exception as err:  # any unpickling failure means a corrupt file
            raise ValueError(f"CIFAR file {str(path)!r} could not be unpickled ({err!r}); "
                             f"it is corrupt or not a CIFAR batch") from err


def find_cifar10_folder(root: str | Path) -> Path:
    """Return the folder holding the CIFAR-10 batches: ``root`` itself or
    ``root/cifar-10-batches-py``. Raises ``ValueError`` saying which files are missing."""
    root = Path(root).expanduser()
    candidates = [root, root / CIFAR10_FOLDER]
    needed = CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES
    for folder in candidates:
        if all((folder / f).is_file() for f in needed):
            return folder
    folder = root / CIFAR10_FOLDER if (root / CIFAR10_FOLDER).is_dir() else root
    missing = [f for f in needed if not (folder / f).is_file()]
    raise ValueError(
        f"root={str(root)!r} is not a CIFAR-10 folder: {str(folder)!r} lacks {missing}. "
        f"Pass root= the '{CIFAR10_FOLDER}' folder extracted from cifar-10-python.tar.gz "
        f"(https://www.cs.toronto.edu/~kriz/cifar.html) or the folder containing it "
        f"(torchvision's CIFAR10 layout); nothing is downloaded"
    )


def _get(batch: dict, key: str) -> Any:
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_cifar_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR batch into ``images`` ``(N, 3, 32, 32)`` uint8 and ``labels``
    ``(N,)`` int64. Raises ``ValueError`` when the file is not a well-formed batch."""
    path = Path(path)
    size = path.stat().st_size
    if size > _MAX_BATCH_BYTES:
        raise ValueError(f"CIFAR file {str(path)!r} is {size} bytes, too large for a batch")
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"CIFAR file {str(path)!r} holds a {type(batch).__name__}, not a dict")
    label_key = "labels" if ("labels" in batch or b"labels" in batch) else "fine_labels"
    try:
        data, labels = _get(batch, "data"), _get(batch, label_key)
    except KeyError as err:
        raise ValueError(f"CIFAR file {str(path)!r} lacks the key {err}; keys are "
                         f"{sorted(map(str, batch))}") from None
    data, labels = np.asarray(data), np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR file {str(path)!r}: 'data' must be a uint8 array of shape "
                         f"(N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"CIFAR file {str(path)!r}: 'labels' must be {data.shape[0]} integers, "
                         f"got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"CIFAR file {str(path)!r}: labels must be in 0..{num_classes - 1}, "
                         f"got range {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar10_classes(folder: Path) -> tuple[str, ...]:
    """Class names from ``batches.meta`` when present, else the standard ten names."""
    meta_path = folder / CIFAR10_META_FILE
    if not meta_path.is_file():
        return CIFAR10_CLASSES
    meta = safe_unpickle(meta_path)
    try:
        names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n)
                      for n in _get(meta, "label_names"))
    except (KeyError, TypeError):
        return CIFAR10_CLASSES
    return names if len(names) == 10 else CIFAR10_CLASSES


def load_cifar10_arrays(root: str | Path) -> dict[str, Any]:
    """Load CIFAR-10 from ``root``.

    Returns ``{"x_train": (50000, 3, 32, 32) uint8, "y_train": (50000,) int64, "x_test",
    "y_test", "classes"}`` (sizes are whatever the batches hold).
    """
    folder = find_cifar10_folder(root)
    train = [read_cifar_batch(folder / f) for f in CIFAR10_TRAIN_FILES]
    test = [read_cifar_batch(folder / f) for f in CIFAR10_TEST_FILES]
    return {
        "x_train": np.concatenate([b[0] for b in train]),
        "y_train": np.concatenate([b[1] for b in train]),
        "x_test": np.concatenate([b[0] for b in test]),
        "y_test": np.concatenate([b[1] for b in test]),
        "classes": read_cifar10_classes(folder),
    }
