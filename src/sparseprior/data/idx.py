"""IDX files (the MNIST / Fashion-MNIST format), read and written with NumPy.

Layout (big-endian)::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                              0x0D float32, 0x0E float64
    byte  3     number of dimensions d (>= 1)
    4*d bytes   the size of each dimension, unsigned 32-bit
    rest        the data, row-major, big-endian

A file may be gzip-compressed; this is detected from its first two bytes, not its name.
"""

from __future__ import annotations

import gzip
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


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise ValueError(f"IDX file {str(path)!r} not found")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"IDX file {str(path)!r} is a corrupt or truncated gzip file ({err}); "
                         f"delete it and get a fresh copy") from err


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


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a NumPy array of its declared shape and type.

    Example: ``train-images-idx3-ubyte.gz`` gives a ``(60000, 28, 28)`` ``uint8`` array.
    Raises ``ValueError`` for a missing, truncated or corrupt file.
    """
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


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
