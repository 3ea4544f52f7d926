"""Run folders: ``runs/<name>/`` with ``config.json``, ``metrics.jsonl``, plots, checkpoints."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sparseprior.common.checkpoint import (
    atomic_write_text,
    ensure_folder,
    remove_stale_temp_files,
)

log = logging.getLogger(__name__)


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
        self.path = ensure_folder(path, "run folder")
        if not os.access(self.path, os.W_OK):
            raise ValueError(f"run folder {str(self.path)!r} is not writable; choose another "
                             "output folder")
        remove_stale_temp_files(self.path)

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
        """Append one JSON record per line (the metrics log); a torn last line is cut first."""
        _drop_torn_tail(self.file(name))
        with open(self.file(name), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(record)) + "\n")

    def read_metrics(self, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
        """The metrics log; a torn last line (a kill mid-write) is dropped, other bad lines
        raise ``ValueError`` naming the file and line."""
        path = self.file(name)
        if not path.exists():
            return []
        lines = path.read_text(errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if number == len(lines):
                    break  # torn last line: the record was never completed
                raise ValueError(f"{str(path)!r} line {number} is not JSON; the metrics log "
                                 "is corrupt (delete the run folder to start again)") from None
        return records

    # -- the one run-folder contract -------------------------------------------------------------

    def claim(self, config: Any, *, may_differ: Iterable[str] = (), kind: str = "run",
              name: str = "config.json") -> bool:
        """Bind this folder to ``config`` (a :class:`Config` or a dict) before any cached result.

        A new folder gets ``config.json``; an existing one must hold the same config except the
        dotted field names in ``may_differ`` (machine settings such as ``device``, ``threads``,
        ``train.device``), which are updated to the requested values. Returns ``True`` when the
        folder already held this experiment (resume), ``False`` when it was new. Raises
        ``ValueError`` naming the differing fields otherwise. A field the folder's config lacks
        because it was added to the code later (``config.added_fields()``) counts as having the
        value older runs used.
        """
        new = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        new = json.loads(json.dumps(_jsonable(new)))  # the form it has on disk
        path = self.file(name)
        if not path.exists():
            self.write_json(name, new)
            return False
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"run folder {str(self.path)!r}: {name} is unreadable ({err}); "
                             "use another folder or delete it") from None
        known = with_added_fields(old, config.added_fields()) if hasattr(
            config, "added_fields") else old
        allowed = set(may_differ)
        differ = [k for k in config_diff(known, new) if not _covered(k, allowed)]
        if differ:
            raise ValueError(f"run folder {str(self.path)!r} holds a different {kind} (fields "
                             f"{differ} differ); use another folder or the same settings")
        if old != new:
            self.write_json(name, new)
        return True

    @contextmanager
    def lock(self, name: str = ".lock", *, wait: bool = False) -> Iterator[None]:
        """Hold an exclusive lock (file ``name`` in the folder). A second process gets a clear
        ``ValueError``, or with ``wait=True`` blocks until the holder is done."""
        import fcntl

        fh = open(self.file(name), "a+")  # noqa: SIM115 (held for the block)
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                if not wait:
                    raise ValueError(f"run folder {str(self.path)!r} is in use by {holder}; "
                                     "wait for it to finish or use another folder") from None
                log.info("waiting for %s (%s in %s)", holder, name, self.path)
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            yield
        finally:
            fh.close()


class PhaseStore:
    """Finished phases of a run, one JSON file each under ``<run>/phases/``, so a rerun of the
    same config resumes after the last finished phase (phases are seeded independently, so a
    resumed run gives the same results as an uninterrupted one).

    ``versions`` names the method version of phases whose computation has changed over time
    (e.g. ``{"timing": 2}``): each is stored with its version (``<name>.version``, absent in
    older folders: version 1), and a stored phase of another version is computed again rather
    than reused, so a resumed folder never mixes an old measurement into a new report.
    """

    def __init__(self, run: RunDir, versions: Mapping[str, int] | None = None) -> None:
        self.run = run
        self.folder = ensure_folder(run.file("phases"), "phases folder")
        self.versions = dict(versions or {})
        self.resumed: list[str] = []
        self.outdated: list[str] = []

    def stored_version(self, name: str) -> int:
        """The method version phase ``name`` was stored with (1 when unrecorded)."""
        try:
            return int(self.run.read_json(f"phases/{name}.version"))
        except (OSError, ValueError):
            return 1

    def get(self, name: str) -> Any:
        """The stored result of phase ``name`` (noted in ``resumed``), or ``None`` (also when
        it was stored by another version of its method, noted in ``outdated``)."""
        if not (self.folder / f"{name}.json").is_file():
            return None
        stored = self.stored_version(name) if name in self.versions else None
        if stored is not None and stored != self.versions[name]:
            if name not in self.outdated:
                self.outdated.append(name)
                log.warning("phase %r in %s was stored by version %d of its method; this code "
                            "runs version %d: computing it again", name, self.folder, stored,
                            self.versions[name])
            return None
        self.resumed.append(name)
        log.info("resume: phase %r already finished, loaded from %s", name, self.folder)
        return self.run.read_json(f"phases/{name}.json")

    def once(self, name: str, compute: Callable[[], Any]) -> Any:
        """The stored result of phase ``name``, or ``compute()`` stored atomically. The phase
        is locked while computed: a second process running the same phase of the same run
        (a phase worker on another core) waits for the first one's result instead."""
        done = self.get(name)
        if done is None:
            with self.run.lock(f"phases/{name}.lock", wait=True):
                done = self.get(name)
                if done is None:
                    done = compute()
                    self.run.write_json(f"phases/{name}.json", done)
                    if name in self.versions:
                        self.run.write_json(f"phases/{name}.version", self.versions[name])
        return done


def _drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (a write killed midway) so the next append is clean."""
    try:
        with open(path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            start = max(0, size - (1 << 20))
            fh.seek(start)
            tail = fh.read()
            cut = tail.rfind(b"\n")
            fh.truncate(start + cut + 1 if cut >= 0 else start)
    except FileNotFoundError:
        return


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out else {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def with_added_fields(config: Mapping[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the nested config dict with each dotted field of ``added`` that it lacks set to
    its value there (only where the parent section exists)."""
    out = copy.deepcopy(dict(config))
    for dotted, value in added.items():
        *parents, leaf = dotted.split(".")
        section = out
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        if isinstance(section, dict) and leaf not in section:
            section[leaf] = value
    return out


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of the fields whose values differ between two (nested) config dicts."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, ...) != b.get(k, ...))


def _covered(key: str, allowed: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in allowed or parts[i - 1] in allowed
               for i in range(1, len(parts) + 1))
