"""Trainer checkpoints: one folder, safetensors + JSON per checkpoint, an atomic ``latest.json``.

Layout (inside ``<run_dir>/checkpoints/``)::

    step-00000120.safetensors   every tensor: model/..., optimizer/..., scheduler/...,
                                masks/..., rng/..., callbacks/...
    step-00000120.json          {"format", "kind": "trainer", "config": TrainConfig,
                                 "meta": {"step", "epoch", "batch_in_epoch", "skeleton"}}
    latest.json                 {"name": "step-00000120", "step": 120, "epoch": 2}

Each file is written atomically (temp file + rename); ``latest.json`` is replaced only after both
files of the new checkpoint exist, so a crash never leaves a half-written "latest". Loading never
unpickles: tensors come from safetensors, the rest from JSON (see :mod:`.state`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sparseprior.common.checkpoint import (
    atomic_write_text,
    load_safetensors_checkpoint,
    save_safetensors_checkpoint,
)
from sparseprior.engine.state import flatten_state, unflatten_state

KIND = "trainer"
LATEST = "latest.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(folder: str | Path, state: dict[str, Any], config: dict[str, Any], *,
                    step: int, meta: dict[str, Any] | None = None, keep: int = 1) -> Path:
    """Write ``state`` as checkpoint ``step-<step>`` in ``folder``, point ``latest.json`` at it,
    and delete all but the newest ``keep`` checkpoints. Returns the ``.safetensors`` path."""
    folder = Path(folder)
    skeleton, tensors = flatten_state(state, prefix="")
    name = checkpoint_name(step)
    info = {"step": step, **(meta or {}), "skeleton": skeleton}
    path = save_safetensors_checkpoint(folder / name, tensors, config, kind=KIND, meta=info)
    atomic_write_text(folder / LATEST, json.dumps({"name": name, "step": step,
                                                   **(meta or {})}, indent=2))
    _prune(folder, keep=keep, protect=name)
    return path


def _prune(folder: Path, *, keep: int, protect: str) -> None:
    names = sorted({p.stem for p in folder.glob("step-*.json") if _NAME.match(p.stem)})
    for stale in [n for n in names if n != protect][: max(0, len(names) - keep)]:
        for suffix in (".safetensors", ".json"):
            (folder / f"{stale}{suffix}").unlink(missing_ok=True)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Path (without suffix) of the checkpoint ``latest.json`` names, or ``None``."""
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["name"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{str(pointer)!r} is not a valid checkpoint pointer: {err}") from err
    return Path(folder) / name


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(state, header)``; ``state`` has CPU tensors, ``header['meta']`` the progress."""
    tensors, header = load_safetensors_checkpoint(path, kind=KIND)
    meta = header.get("meta", {})
    if "skeleton" not in meta:
        raise ValueError(f"checkpoint {str(path)!r} has no state skeleton in its JSON header")
    return unflatten_state(meta["skeleton"], tensors), header
