"""IDX files (the MNIST / Fashion-MNIST format), read and written with NumPy.

Layout (big-endian)::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                              0x0D float32, 0x0E float64
    byte  3     number of dimensions d (>= 1)
    4*d bytes   the size of each dimension, unsigned 32-bit
    rest        the data, row-major, big-endian

A file may be gzip-compressed; this is detected from its first two bytes, not its name. A
gzip file is inflated only as far as its IDX header says the data goes: the header is read
first, the declared size is checked against ``max_bytes``, and a stream that inflates to more
than it declares is refused, so a small ``.gz`` cannot become a memory bomb.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from sparseprior.common.checkpoint import atomic_write_bytes

#: IDX element-type code -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
#: Default cap on an IDX file's (uncompressed) size: 1 GiB, 20x Fashion-MNIST's training images.
DEFAULT_MAX_IDX_BYTES = 2**30


class _Inflater:
    """Inflate a gzip stream a given number of bytes at a time (never more)."""

    def __init__(self, raw: bytes, source: str) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = raw
        self._source = source
        self.out = b""

    def take(self, total: int) -> bytes:
        """Inflate until ``out`` has ``total`` bytes or the stream ends; return ``out``."""
        try:
            while len(self.out) < total and not self._z.eof:
                chunk = self._z.decompress(self._tail, total - len(self.out))
                progressed = chunk or len(self._z.unconsumed_tail) < len(self._tail)
                self._tail = self._z.unconsumed_tail
                self.out += chunk
                if not progressed and not self._z.eof:
                    raise zlib.error("the gzip stream ends early")
        except zlib.error as err:
            raise ValueError(f"IDX file {self._source!r} is a corrupt or truncated gzip file "
                             f"({err}); delete it and get a fresh copy") from None
        return self.out

    def finish(self) -> None:
        """The stream must have ended (complete gzip trailer) with nothing after it."""
        if not self._z.eof or self._z.unused_data:
            raise ValueError(f"IDX file {self._source!r} is a corrupt or truncated gzip file "
                             f"(it does not end where its IDX header says); delete it and get "
                             f"a fresh copy")


def _declared_size(head: bytes, source: str) -> int | None:
    """Total IDX bytes (header + data) its header declares, or ``None`` if ``head`` is too
    short to tell. Raises for a malformed header."""
    if len(head) < 4:
        return None
    if head[0] or head[1] or head[2] not in IDX_DTYPES or head[3] < 1:
        parse_idx(head, source)  # raises the precise header error
    header_len = 4 + 4 * head[3]
    if len(head) < header_len:
        return None
    shape = struct.unpack(f">{head[3]}I", head[4:header_len])
    return header_len + math.prod(shape) * IDX_DTYPES[head[2]].itemsize


def _inflate_idx(raw: bytes, source: str, max_bytes: int) -> bytes:
    """Inflate a gzipped IDX file to exactly the size its header declares."""
    stream = _Inflater(raw, source)
    head = stream.take(4)
    if len(head) == 4 and head[3] >= 1:
        head = stream.take(4 + 4 * head[3])
    total = _declared_size(head, source)
    if total is None:  # too short for its header: parse_idx says so
        return stream.out
    if total > max_bytes:
        raise ValueError(f"IDX file {source!r} declares {total:,} bytes, more than the limit "
                         f"max_bytes={max_bytes:,}; refusing to inflate it")
    data = stream.take(total)
    if len(data) < total:
        return data  # truncated: parse_idx reports the missing bytes
    if len(stream.take(total + 1)) > total:
        raise ValueError(f"IDX file {source!r} inflates to more than the {total:,} bytes its "
                         f"header declares; refusing it")
    stream.finish()
    return data


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    if not path.is_file():
        raise ValueError(f"IDX file {str(path)!r} not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"IDX file {str(path)!r} has {size:,} bytes, more than the limit "
                         f"max_bytes={max_bytes:,}")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    return _inflate_idx(raw, str(path), max_bytes)


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into an array in native byte order.

    Raises ``ValueError`` naming ``source`` when the magic number, the element type, the number
    of dimensions or the data size is wrong.
    """
    if len(data) < 4:
        raise ValueError(f"IDX file {source!r} is too short ({len(data)} bytes) to hold a header")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(f"IDX file {source!r} has a bad magic number {data[:4].hex()!r}; an IDX "
                         f"file starts with two zero bytes, a type code and the number of dims")
    if type_code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"IDX file {source!r} has unknown element type 0x{type_code:02X}; "
                         f"allowed: {allowed}")
    if ndim < 1:
        raise ValueError(f"IDX file {source!r} declares {ndim} dimensions; at least 1 is needed")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"IDX file {source!r} is truncated inside its header "
                         f"({len(data)} bytes, header needs {header_len})")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header_len
    if got != expected:
        raise ValueError(f"IDX file {source!r} declares shape {shape} ({expected} data bytes) "
                         f"but holds {got} data bytes; the file is truncated or corrupt")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path, *, max_bytes: int = DEFAULT_MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a NumPy array of its declared shape and type.

    Example: ``train-images-idx3-ubyte.gz`` gives a ``(60000, 28, 28)`` ``uint8`` array.
    ``max_bytes`` caps the file's uncompressed size (checked from its header before a gzip
    file is inflated). Raises ``ValueError`` for a missing, truncated, corrupt or too large
    file.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    path = Path(path)
    return parse_idx(_read_bytes(path, max_bytes), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """Encode ``array`` (one of the dtypes in :data:`IDX_DTYPES`, ndim >= 1) as IDX bytes."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"array dtype {array.dtype} cannot be stored in IDX; allowed: "
                         f"{sorted(str(d) for d in codes)}")
    if array.ndim < 1 or array.ndim > 255:
        raise ValueError(f"array must have 1..255 dimensions for IDX, got {array.ndim}")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (atomically). ``compress=None`` gzips when the name ends
    in ``.gz``. Returns the path."""
    path = Path(path)
    data = encode_idx(array)
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, mtime=0)
    return atomic_write_bytes(path, data)
