"""Seeded client splits: IID, Dirichlet(beta) label skew and pathological label shards.

A split spec is a string: ``"iid"``, ``"dirichlet:0.3"`` (per class, client proportions drawn
from Dirichlet(beta)) or ``"shards:2"`` (McMahan et al.: sort by label, cut into
``clients x k`` equal shards, deal ``k`` to each client). Every function is pure in its seed;
:func:`make_split` returns index lists that are saved as JSON in the run folder.

Per-client test splits ("as in the paper"): client ``k`` gets ``round(n_test * n_k / N)``
test images with its own training label proportions, drawn from the global test set (seeded);
the global test set is also kept.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparseprior.common.checkpoint import atomic_write_text
from sparseprior.common.registry import Registry

#: split kind -> ``fn(labels, clients, param, rng) -> list of index arrays``.
SPLITS: Registry[Callable[..., list[np.ndarray]]] = Registry("split")
#: Dirichlet splits are redrawn until every client has at least this many samples (or N // K).
MIN_CLIENT_SAMPLES = 10
DIRICHLET_TRIES = 100


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """A parsed split spec: ``kind`` and its parameter (beta or shards per client)."""

    kind: str
    param: float | int | None = None

    def __str__(self) -> str:
        return self.kind if self.param is None else f"{self.kind}:{self.param:g}"


def parse_split(spec: str) -> SplitSpec:
    """``"iid"`` / ``"dirichlet:0.3"`` / ``"shards:2"`` -> :class:`SplitSpec` (``ValueError``
    naming the allowed forms otherwise)."""
    allowed = "iid, dirichlet:BETA (BETA > 0) or shards:K (K >= 1 shards per client)"
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"split must be a string, one of {allowed}; got {spec!r}")
    kind, _, raw = spec.strip().partition(":")
    SPLITS.get(kind)
    if kind == "iid":
        if raw:
            raise ValueError(f"split 'iid' takes no parameter, got {spec!r}")
        return SplitSpec("iid")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"split={spec!r}: {kind} needs a number after ':'; allowed: "
                         f"{allowed}") from None
    if kind == "dirichlet":
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"split={spec!r}: the Dirichlet concentration beta must be > 0 "
                             f"(small = more skewed), got {value:g}")
        return SplitSpec("dirichlet", value)
    if value != int(value) or value < 1:
        raise ValueError(f"split={spec!r}: shards per client must be an integer >= 1")
    return SplitSpec("shards", int(value))


@SPLITS.register("iid")
def iid_split(labels: np.ndarray, clients: int, param: Any, rng: np.random.Generator
              ) -> list[np.ndarray]:
    """A random permutation cut into ``clients`` near-equal parts."""
    if len(labels) < clients:
        raise ValueError(f"split 'iid': {len(labels)} samples cannot give each of "
                         f"{clients} clients one; use fewer clients or more data")
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), clients)]


@SPLITS.register("shards")
def shard_split(labels: np.ndarray, clients: int, shards_per_client: int,
                rng: np.random.Generator) -> list[np.ndarray]:
    """Sort by label (stable), cut into ``clients * k`` equal shards, deal ``k`` random shards
    to each client. ``ValueError`` unless the shards divide the data exactly."""
    n_shards = clients * shards_per_client
    if len(labels) % n_shards:
        raise ValueError(f"split 'shards:{shards_per_client}': {len(labels)} samples do not "
                         f"divide into clients x shards = {clients} x {shards_per_client} = "
                         f"{n_shards} equal shards; change clients, shards or subset (a "
                         f"multiple of {n_shards})")
    order = np.argsort(labels, kind="stable")
    shards = order.reshape(n_shards, -1)
    dealt = rng.permutation(n_shards).reshape(clients, shards_per_client)
    return [np.sort(shards[row].reshape(-1)) for row in dealt]


@SPLITS.register("dirichlet")
def dirichlet_split(labels: np.ndarray, clients: int, beta: float, rng: np.random.Generator
                    ) -> list[np.ndarray]:
    """Per class, shuffle its indices and cut them by proportions ~ Dirichlet(beta * 1_K).

    Redrawn (up to ``DIRICHLET_TRIES`` times) until every client has at least
    ``min(MIN_CLIENT_SAMPLES, N // K)`` samples; ``ValueError`` if that never happens.
    """
    if len(labels) < clients:
        raise ValueError(f"split 'dirichlet': {len(labels)} samples cannot give each of "
                         f"{clients} clients one")
    need = max(1, min(MIN_CLIENT_SAMPLES, len(labels) // clients))
    classes = np.unique(labels)
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(clients, float(beta)))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for k, piece in enumerate(np.split(idx, cuts)):
                parts[k].append(piece)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= need:
            return out
    raise ValueError(f"split 'dirichlet:{beta:g}' left some of the {clients} clients with "
                     f"fewer than {need} samples in {DIRICHLET_TRIES} draws; use a larger "
                     f"beta, fewer clients or more data")


def client_test_split(train_parts: Sequence[np.ndarray], train_labels: np.ndarray,
                      test_labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-client test indices with each client's training label proportions.

    Client ``k`` gets ``round(n_test * n_k / N)`` images; per class ``c`` the count is its share
    of the client's training labels (largest remainders), drawn without replacement from a
    fresh seeded permutation of the test images of class ``c`` (capped at what exists).
    """
    n_train, n_test = sum(len(p) for p in train_parts), len(test_labels)
    by_class = {int(c): np.flatnonzero(test_labels == c) for c in np.unique(test_labels)}
    out = []
    for part in train_parts:
        size = int(round(n_test * len(part) / n_train))
        classes, counts = np.unique(train_labels[part], return_counts=True)
        want = counts / counts.sum() * size
        take = np.floor(want).astype(np.int64)
        for i in np.argsort(-(want - take), kind="stable")[: size - int(take.sum())]:
            take[i] += 1
        chosen = []
        for c, t in zip(classes.tolist(), take.tolist(), strict=True):
            pool = by_class.get(int(c), np.empty(0, dtype=np.int64))
            chosen.append(rng.permutation(pool)[: min(t, len(pool))])
        out.append(np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64))
    return out


@dataclasses.dataclass
class ClientSplit:
    """Index lists: ``train[k]`` / ``test[k]`` are client ``k``'s training / test indices into
    the global training / test sets."""

    spec: str
    seed: int
    train: list[np.ndarray]
    test: list[np.ndarray]

    @property
    def clients(self) -> int:
        return len(self.train)

    def sizes(self) -> list[int]:
        return [len(p) for p in self.train]

    def to_dict(self) -> dict[str, Any]:
        return {"format": "sparseprior-fed-split/1", "spec": self.spec, "seed": self.seed,
                "train": [p.tolist() for p in self.train],
                "test": [p.tolist() for p in self.test]}

    def save(self, path: str | Path) -> Path:
        """Write the index JSON atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> ClientSplit:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != "sparseprior-fed-split/1":
            raise ValueError(f"{str(path)!r} is not a sparseprior client split file")
        return cls(data["spec"], int(data["seed"]),
                   [np.asarray(p, dtype=np.int64) for p in data["train"]],
                   [np.asarray(p, dtype=np.int64) for p in data["test"]])


def make_split(spec: str, train_labels: Sequence[int] | np.ndarray,
               test_labels: Sequence[int] | np.ndarray, clients: int, seed: int
               ) -> ClientSplit:
    """Split the training set among ``clients`` by ``spec``; add per-client test splits.

    Args:
        spec: ``"iid"``, ``"dirichlet:BETA"`` or ``"shards:K"``.
        train_labels, test_labels: int labels ``(N,)`` and ``(N_test,)``.
        clients: number of clients K >= 1.
        seed: the only source of randomness.
    """
    parsed = parse_split(spec)
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ValueError(f"clients must be an integer >= 1, got {clients!r}")
    y = np.asarray(train_labels, dtype=np.int64)
    y_test = np.asarray(test_labels, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0x5b1d])
    train = SPLITS.get(parsed.kind)(y, clients, parsed.param, rng)
    test = client_test_split(train, y, y_test, np.random.default_rng([int(seed), 0x7e57]))
    return ClientSplit(str(parsed), int(seed), train, test)
