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
unpickler that never hands NumPy a size chosen by the file: the globals an array pickle names
(``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, ``_frombuffer``, ``_codecs.encode``)
resolve to stand-ins that accept only integer dtypes of at most 8 bytes, at most 2 dimensions
and at most one batch of values, and build an array only from bytes the file really holds
(``len(data) == prod(shape) * itemsize``). Calling ``numpy.ndarray(shape, dtype)`` directly —
an empty array of any size from a few bytes — is refused, as is every other global.
A batch must hold 1 to 10,000 images. Only use data from a source you trust.
"""

from __future__ import annotations

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


#: Images in one official batch; a batch holding more is not a CIFAR batch.
CIFAR_BATCH_IMAGES = 10_000
_MAX_ARRAY_VALUES = CIFAR_BATCH_IMAGES * 3 * 32 * 32
_ALLOWED_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})


class _NotCallable:
    """Stand-in for ``numpy.ndarray``: usable as ``_reconstruct``'s class argument only."""

    def __repr__(self) -> str:
        return "numpy.ndarray (not callable here)"


_NDARRAY = _NotCallable()


class _SafeDtype:
    """Stand-in for ``numpy.dtype`` in a pickle: an integer dtype of at most 8 bytes."""

    def __init__(self, name: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(name, str) or name.lstrip("<>|=") not in _ALLOWED_DTYPES:
            raise ValueError(f"dtype {name!r} is not one a CIFAR batch uses (integers only)")
        self.dtype = np.dtype(name)

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, align, flags)
        if not (isinstance(state, tuple) and len(state) == 8 and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)):
            raise ValueError(f"dtype state {str(state)[:80]!r} is not a plain integer dtype")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _checked_array(shape: Any, dtype: Any, data: Any, fortran: bool = False) -> np.ndarray:
    """An array of ``shape`` read from ``data``, which must hold exactly its bytes."""
    if not isinstance(dtype, _SafeDtype):
        raise ValueError("an array in the file has no plain integer dtype")
    if not (isinstance(shape, tuple) and len(shape) <= 2 and
            all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ValueError(f"array shape {str(shape)[:80]} is not one a CIFAR batch uses")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > _MAX_ARRAY_VALUES:
        raise ValueError(f"an array of shape {shape} is larger than a CIFAR batch")
    if isinstance(data, str):
        data = data.encode("latin1")  # Python 2 pickles store the bytes as a latin-1 str
    if not isinstance(data, (bytes, bytearray)) or len(data) != count * dtype.dtype.itemsize:
        raise ValueError(f"an array of shape {shape} needs {count * dtype.dtype.itemsize} "
                         f"bytes; the file holds {len(data) if hasattr(data, '__len__') else 0}")
    flat = np.frombuffer(bytes(data), dtype=dtype.dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


class _ArrayStub:
    """What ``_reconstruct`` returns: the array is made in ``__setstate__`` (pickle's BUILD)
    from the bytes in the file, then swapped in by :func:`_materialise`."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise ValueError("an array's pickled state is not numpy's (version 1)")
        _, shape, dtype, fortran, data = state
        self.array = _checked_array(shape, dtype, data, bool(fortran))


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayStub:
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise ValueError("the file builds an array in a way numpy's pickles never do")
    return _ArrayStub()


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return _checked_array(tuple(shape) if isinstance(shape, (tuple, list)) else shape,
                          dtype, data, order == "F")


def _scalar(dtype: Any, data: Any) -> Any:
    return _checked_array((), dtype, data)[()]


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise ValueError("_codecs.encode is only used for latin-1 strings")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _SafeDtype,
        ("_codecs", "encode"): _encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _reconstruct
        allowed[(mod, "scalar")] = _scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = _frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the stand-ins of :func:`_allowed_globals`."""

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


def _materialise(value: Any, source: str) -> Any:
    """Swap array stand-ins for their arrays (top level and dict values)."""
    if isinstance(value, _ArrayStub):
        if value.array is None:
            raise ValueError(f"CIFAR file {source!r} holds an array without data")
        return value.array
    if isinstance(value, (_SafeDtype, _NotCallable)):
        raise ValueError(f"CIFAR file {source!r} holds a bare numpy type, not data")
    if isinstance(value, dict):
        return {k: _materialise(v, source) for k, v in value.items()}
    return value


def safe_unpickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only integer NumPy arrays built from the file's own bytes,
    dicts, lists, strings and numbers."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            return _materialise(_RestrictedUnpickler(fh, str(path)).load(), str(path))
        except ValueError as err:
            if str(path) in str(err):
                raise
            raise ValueError(f"CIFAR file {str(path)!r} is refused: {err}") from None
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
    if not isinstance(data, np.ndarray):
        raise ValueError(f"CIFAR file {str(path)!r}: 'data' must be an array, got "
                         f"{type(data).__name__}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        raise ValueError(f"CIFAR file {str(path)!r}: 'labels' must be a list of {len(data)} "
                         f"integers")
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR file {str(path)!r}: 'data' must be a uint8 array of shape "
                         f"(N, 3072), got {data.dtype} {data.shape}")
    if not 1 <= data.shape[0] <= CIFAR_BATCH_IMAGES:
        raise ValueError(f"CIFAR file {str(path)!r} holds {data.shape[0]} images; a batch "
                         f"holds 1 to {CIFAR_BATCH_IMAGES}")
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
