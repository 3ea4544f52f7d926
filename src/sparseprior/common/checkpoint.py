"""Atomic file writes and the one checkpoint format: safetensors tensors + a JSON config.

A checkpoint is a folder (or a ``.safetensors`` file with a ``.json`` twin)::

    <name>.safetensors   tensors only, loaded without unpickling
    <name>.json          {"format": ..., "config": {...}, "meta": {...}}
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_folder(folder: str | Path, what: str = "folder") -> Path:
    """Create ``folder`` (and parents); a file in the way or a permission problem is a
    one-line ``ValueError`` naming ``what`` and the path."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot write into the {what} {str(folder)!r}: it exists as a file "
                         "(or lies under one); choose another output path") from None
    except PermissionError:
        raise ValueError(f"cannot create the {what} {str(folder)!r}: permission denied; "
                         "choose another output path") from None
    return folder


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    The file gets the permissions a plain ``open(path, "w")`` would (0666 minus the umask).
    """
    path = Path(path)
    ensure_folder(path.parent, f"folder of {path.name}")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=TEMP_SUFFIX)
    except PermissionError:
        raise ValueError(f"cannot write into {str(path.parent)!r}: permission denied; "
                         "choose another output path") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: str | Path) -> int:
    """Delete temp files left by writes killed before their rename; return how many."""
    count = 0
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            count += 1
    return count


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    base = path.with_suffix("") if path.suffix in {".safetensors", ".json"} else path
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def save_safetensors_checkpoint(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    *,
    kind: str,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save ``tensors`` (made contiguous, moved to CPU) and a JSON ``config`` atomically.

    ``kind`` names what is saved (e.g. ``"solver/LISTA-CPSS"``); loading checks it.
    Returns the path of the ``.safetensors`` file.
    """
    st_path, js_path = _paths(path)
    blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    atomic_write_bytes(st_path, blob)
    header = {"format": "sparseprior-checkpoint/1", "kind": kind, "config": config,
              "meta": meta or {}}
    atomic_write_text(js_path, json.dumps(header, indent=2, sort_keys=True))
    return st_path


def load_safetensors_checkpoint(
    path: str | Path, *, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_safetensors_checkpoint`.

    Returns ``(tensors, header)`` where ``header`` has ``kind``, ``config`` and ``meta``.
    Raises ``ValueError`` for a missing, corrupt or wrong-kind checkpoint.
    """
    st_path, js_path = _paths(path)
    for p in (st_path, js_path):
        if not p.is_file():
            raise ValueError(f"checkpoint file {str(p)!r} not found; a checkpoint is a "
                             f"'.safetensors' file with a '.json' file of the same name beside it")
    try:
        header = json.loads(js_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint config {str(js_path)!r} is not valid JSON: {err}") from err
    if not isinstance(header, dict) or header.get("format") != "sparseprior-checkpoint/1":
        raise ValueError(f"{str(js_path)!r} is not a sparseprior checkpoint header")
    if kind is not None and header.get("kind") != kind and not str(header.get("kind", "")
                                                                     ).startswith(kind + "/"):
        raise ValueError(f"checkpoint {str(st_path)!r} holds {header.get('kind')!r}, "
                         f"expected {kind!r}")
    try:
        tensors = st_load(st_path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise ValueError(f"checkpoint tensors {str(st_path)!r} could not be read: {err}") from err
    return {k: v.to(device) for k, v in tensors.items()}, header
