"""What every experiment runner on the one loop shares, without knowing models or data.

* :data:`MACHINE_FIELDS`: the :class:`TrainConfig` fields that may change between a run and its
  continuation (they change where and how fast it runs, not what it computes); pass them to
  :meth:`RunDir.claim` as ``may_differ``.
* :func:`run_name`: a default run-folder name with a short hash of the non-default config
  (open_lth style), so different settings never share a folder.

The model/data part of experiment configs is :class:`sparseprior.workloads.ModelDataConfig`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sparseprior.common.config import Config

#: TrainConfig fields that may differ between a run and its continuation.
MACHINE_FIELDS = ("device", "progress", "num_threads", "num_workers", "log_every",
                  "eval_batch_size", "checkpoint_every", "keep_checkpoints")


def config_hash(config: Config, *, ignore: Iterable[str] = MACHINE_FIELDS, length: int = 8
                ) -> str:
    """Short hex digest of the fields of ``config`` that differ from its class's defaults.

    Fields named in ``ignore`` (a dotted path or any path component, as in
    :meth:`RunDir.claim`) are left out, so machine settings never change the name.
    """
    skip = set(ignore)
    new = _leaves(json.loads(config.to_json()))
    try:
        base = _leaves(json.loads(type(config)().to_json()))
    except (TypeError, ValueError):  # required fields or an invalid default: hash everything
        base = {}
    changed = {k: v for k, v in new.items()
               if base.get(k, ...) != v and not any(p in skip for p in k.split("."))
               and k not in skip}
    text = json.dumps(changed, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_name(prefix: str, config: Config, *, ignore: Iterable[str] = MACHINE_FIELDS) -> str:
    """``<prefix>-<hash>``: a readable prefix plus :func:`config_hash` of ``config``."""
    return f"{prefix}-{config_hash(config, ignore=ignore)}"


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a nested dict (empty dicts are leaves)."""
    if isinstance(data, Mapping) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}
