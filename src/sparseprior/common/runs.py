"""Run folders: ``runs/<name>/`` with ``config.json``, ``metrics.jsonl``, plots, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sparseprior.common.checkpoint import atomic_write_text


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


class RunDir:
    """A results folder. Every file in it is written atomically, except the append-only log."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, data: Any) -> Path:
        return atomic_write_text(self.file(name), json.dumps(_jsonable(data), indent=2))

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.file(name), text)

    def write_config(self, config: Any) -> Path:
        data = config.to_dict() if hasattr(config, "to_dict") else config
        return self.write_json("config.json", data)

    def log_metrics(self, record: dict[str, Any], name: str = "metrics.jsonl") -> None:
        """Append one JSON record per line (the metrics log)."""
        with open(self.file(name), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(record)) + "\n")

    def read_metrics(self, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
        path = self.file(name)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
