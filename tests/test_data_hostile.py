"""Hostile dataset files: a tiny CIFAR pickle that builds a huge array, IDX gzip bombs."""

from __future__ import annotations

import gzip
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from sparseprior.data import cifar
from sparseprior.data.cifar import read_cifar_batch, safe_unpickle
from sparseprior.data.idx import encode_idx, read_idx


def _batch(n: int = 3, labels: object = None) -> dict:
    data = (np.arange(n * 3072) % 251).astype(np.uint8).reshape(n, 3072)
    return {b"data": data, b"labels": [i % 10 for i in range(n)] if labels is None else labels,
            b"filenames": [b"a.png"] * n}


class _Reduce:
    """Pickles as ``func(*args)`` (what a hostile file can say)."""

    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Rebuild:
    """Pickles like an ndarray but with a state of our choosing."""

    def __init__(self, state: tuple) -> None:
        self.state = state

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (0,), b"b"), self.state


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(_batch(), protocol=protocol))
    images, labels = read_cifar_batch(path)
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images.reshape(3, -1), _batch()[b"data"])
    assert labels.tolist() == [0, 1, 2]
    arr = np.arange(5, dtype=">i4")  # other integer dtypes and byte orders decode exactly
    (tmp_path / "x").write_bytes(pickle.dumps({"a": arr}, protocol=protocol))
    assert safe_unpickle(tmp_path / "x")["a"].tolist() == [0, 1, 2, 3, 4]


def test_tiny_pickle_building_a_huge_array_is_refused(tmp_path):
    """The issue's case: 193 bytes whose pickle calls numpy.ndarray(shape, dtype) were
    accepted as 300,000 zero images (4.8 GB)."""
    bomb = {b"data": _Reduce(np.ndarray, ((300_000, 3072), np.dtype(np.uint8))),
            b"labels": _Reduce(np.ndarray, ((300_000,), np.dtype(np.int64)))}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(bomb, protocol=2))
    assert path.stat().st_size < 400
    with pytest.raises(ValueError, match="could not be unpickled|refused"):
        read_cifar_batch(path)
    assert _peak(lambda: pytest.raises(ValueError, read_cifar_batch, path)) < 2**20


@pytest.mark.parametrize("state,match", [
    ((1, (300_000, 3072), np.dtype(np.uint8), False, b"\0"), "larger than a CIFAR batch"),
    ((1, (10, 3072), np.dtype(np.uint8), False, b"\0" * 7), "needs 30720 bytes"),
    ((1, (2, 2, 2), np.dtype(np.uint8), False, b"\0" * 8), "shape"),
    ((1, (2,), np.dtype(object), False, [1, 2]), "dtype"),
    ((1, (2,), np.dtype(np.float64), False, b"\0" * 16), "dtype"),
    ((2, (2,), np.dtype(np.uint8), False, b"\0" * 2), "state"),
])
def test_array_states_are_checked_before_allocation(tmp_path, state, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Rebuild(state), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match=match):
        read_cifar_batch(path)


def test_cifar_counts_and_labels(tmp_path, monkeypatch):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(_batch(4)))
    monkeypatch.setattr(cifar, "CIFAR_BATCH_IMAGES", 3)
    with pytest.raises(ValueError, match="holds 4 images; a batch holds 1 to 3"):
        read_cifar_batch(path)
    monkeypatch.undo()
    path.write_bytes(pickle.dumps(_batch(0)))
    with pytest.raises(ValueError, match="holds 0 images"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps(_batch(2, labels=["a", "b"])))
    with pytest.raises(ValueError, match="'labels' must be a list of 2 integers"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps(_batch(2, labels=[0])))
    with pytest.raises(ValueError, match="'labels' must be a list of 2 integers"):
        read_cifar_batch(path)


# --------------------------------------------------------------------------- IDX


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def test_idx_gzip_bomb_is_refused_without_inflating(tmp_path):
    """The issue's case: a 2.3 MB IDX .gz inflated to 4.9 GB before it was rejected. Here the
    header declares 8 bytes of data and the stream carries 64 MiB."""
    header = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 8)
    path = tmp_path / "bomb-idx1-ubyte.gz"
    path.write_bytes(_gz(header + bytes(64 * 2**20)))
    assert path.stat().st_size < 2**20
    with pytest.raises(ValueError, match="inflates to more than the 16 bytes"):
        read_idx(path)
    assert _peak(lambda: pytest.raises(ValueError, read_idx, path)) < 2**20


def test_idx_declared_size_is_capped_before_inflating(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 300_000, 128, 128)  # 4.9 GB
    path = tmp_path / "big-idx3-ubyte.gz"
    path.write_bytes(_gz(header + bytes(1000)))
    with pytest.raises(ValueError, match="declares 4,915,200,016 bytes, more than the limit"):
        read_idx(path)
    good = tmp_path / "ok-idx1-ubyte.gz"
    good.write_bytes(_gz(encode_idx(np.arange(100, dtype=np.uint8))))
    assert read_idx(good).size == 100
    with pytest.raises(ValueError, match="max_bytes=50"):
        read_idx(good, max_bytes=50)
    raw = tmp_path / "ok-idx1-ubyte"
    raw.write_bytes(encode_idx(np.arange(100, dtype=np.uint8)))
    with pytest.raises(ValueError, match="has 108 bytes, more than the limit max_bytes=50"):
        read_idx(raw, max_bytes=50)


def test_idx_gzip_with_trailing_data_or_second_member_is_refused(tmp_path: Path):
    data = encode_idx(np.arange(10, dtype=np.uint8))
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(_gz(data) + b"junk")
    with pytest.raises(ValueError, match="does not end where its IDX header says"):
        read_idx(path)
    path.write_bytes(_gz(data)[:-3])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_idx(path)
    short = encode_idx(np.arange(10, dtype=np.uint8))[:-2]
    path.write_bytes(_gz(short))
    with pytest.raises(ValueError, match="holds 8 data bytes"):
        read_idx(path)
