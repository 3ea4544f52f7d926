"""MNIST and Fashion-MNIST from folders of IDX files.

Fashion-MNIST's default folder is :data:`FASHION_MNIST_DEFAULT_ROOT`, filled by the Debian
package ``dataset-fashion-mnist``. MNIST has no default: pass the folder holding its four IDX
files. Each file may be gzip-compressed (``.gz``) or raw; torchvision's layout
(``root/MNIST/raw``, ``root/FashionMNIST/raw``) is found too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseprior.data.idx import read_idx

FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))
_TORCHVISION_SUBDIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _how_to_get(name: str) -> str:
    if name == "fashion-mnist":
        return ("install the Debian package with `apt-get install dataset-fashion-mnist` "
                f"(files land in {str(FASHION_MNIST_DEFAULT_ROOT)}) or pass root= a folder "
                "holding these IDX files")
    return ("pass root= a folder holding the four MNIST IDX files (raw or .gz), e.g. from "
            "http://yann.lecun.com/exdb/mnist/ or torchvision's MNIST(root)/MNIST/raw folder")


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_files(name: str, root: str | Path | None) -> dict[str, Path]:
    """Locate the four IDX files of ``name`` (``"mnist"`` or ``"fashion-mnist"``) under ``root``.

    Looks in ``root`` and in torchvision's ``root/<MNIST|FashionMNIST>/raw``. Raises
    ``ValueError`` listing exactly which files are missing and how to get them.
    """
    if root is None:
        if name != "fashion-mnist":
            raise ValueError(f"dataset {name!r} needs root=: {_how_to_get(name)}")
        root = FASHION_MNIST_DEFAULT_ROOT
    root = Path(root).expanduser()
    folders = [root, root / _TORCHVISION_SUBDIRS[name] / "raw"]
    best: dict[str, Path] = {}
    for folder in folders:
        found = {k: p for k, stem in IDX_FILES.items() if (p := _find_file(folder, stem))}
        if len(found) == len(IDX_FILES):
            return found
        if len(found) > len(best):
            best = found
    missing = [IDX_FILES[k] + "[.gz]" for k in IDX_FILES if k not in best]
    where = str(root) if root.is_dir() else f"{str(root)} (no such folder)"
    raise ValueError(f"dataset {name!r}: missing file(s) {missing} in {where}; "
                     f"{_how_to_get(name)}")


def _check_pair(images: np.ndarray, labels: np.ndarray, files: tuple[Path, Path]) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{str(files[0])!r} must hold uint8 images (N, H, W), got "
                         f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{str(files[1])!r} holds {labels.shape} labels but "
                         f"{str(files[0])!r} holds {images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{str(files[1])!r}: labels must be 0..9, got max {labels.max()}")


def load_idx_arrays(name: str, root: str | Path | None = None) -> dict[str, np.ndarray]:
    """Load MNIST-format IDX files as ``{"x_train": (N, 28, 28) uint8, "y_train": (N,) int64,
    "x_test", "y_test"}``. ``root=None`` is allowed for Fashion-MNIST only."""
    paths = find_idx_files(name, root)
    out = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        _check_pair(out[f"x_{split}"], out[f"y_{split}"],
                    (paths[f"x_{split}"], paths[f"y_{split}"]))
        out[f"y_{split}"] = out[f"y_{split}"].astype(np.int64)
    return out
