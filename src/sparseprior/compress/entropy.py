"""Part coders of the packed format, version 2: bytes in, bytes out, bounded on the way back.

Each coder turns one part's bytes (bit-packed codes, byte-aligned codes, a bitmap, a delta
stream, scales, float values) into stored bytes; the packer tries every available coder on
every part and keeps the smallest, recording its name in the header (the record's ``coders``,
one per part). Decoding takes the most bytes the part may inflate to (known from the header's
shape, ``nnz`` and widths) and raises ``ValueError`` for more, for a stream that does not end
exactly, or for a corrupt one.

Coders (registry :data:`CODERS`):

* ``none``: the bytes as they are;
* ``zlib`` / ``lzma`` (standard library), ``zstd`` (``zstandard``), ``brotli`` (``brotli``):
  general-purpose byte compressors at their strongest settings;
* ``<coder>-shuffle4`` (lzma, zstd, brotli, ans): the coder applied after regrouping the
  bytes of 4-byte words by position (float32 scales and biases share exponent bytes);
* ``ans``: an order-0 model of the part's byte values coded with ``constriction``'s rANS
  (``AnsCoder``). Layout: ``varint n_symbols``, ``varint n_used``, then for each used byte
  value (ascending) ``varint gap from the previous value`` and ``varint count``, then the
  ANS words (uint32, little-endian). The decoder checks that the words are fully consumed and
  that the decoded histogram equals the stored counts.

Optional packages are used when installed; a file naming a coder whose package is missing
cannot be read (``ValueError`` saying which package to install).
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparseprior.common.registry import Registry


@dataclass(frozen=True)
class Coder:
    """``encode(data) -> stored``; ``decode(stored, max_len, where) -> data`` (at most
    ``max_len`` bytes, ``ValueError`` otherwise); ``available()``: its package is installed."""

    encode: Callable[[bytes], bytes]
    decode: Callable[[bytes, int, str], bytes]
    available: Callable[[], bool] = lambda: True
    package: str = ""


CODERS: Registry[Coder] = Registry("part coder")


def _too_long(where: str, max_len: int) -> ValueError:
    return ValueError(f"{where} decodes to more than the {max_len} bytes its fields allow")


def _has(module: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            __import__(module)
        except ImportError:
            return False
        return True
    return check


# --------------------------------------------------------------------------- plain coders


CODERS.register("none", Coder(lambda d: d, lambda d, n, w: _check_len(d, n, w)))


def _check_len(data: bytes, max_len: int, where: str) -> bytes:
    if len(data) > max_len:
        raise _too_long(where, max_len)
    return data


def _zlib_decode(data: bytes, max_len: int, where: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_len + 1)
    except zlib.error as err:
        raise ValueError(f"{where} is not a valid zlib stream ({err})") from None
    if len(out) > max_len or inflater.unconsumed_tail:
        raise _too_long(where, max_len)
    if not inflater.eof or inflater.unused_data:
        raise ValueError(f"{where} is a truncated zlib stream or has trailing bytes")
    return out


CODERS.register("zlib", Coder(lambda d: zlib.compress(d, 9), _zlib_decode))


_LZMA_DICT = 1 << 24  # 16 MiB: the decoder's memory is bounded by the dictionary


def _lzma_filters(size: int) -> list[dict[str, int]]:
    dict_size = min(_LZMA_DICT, max(1 << 12, 1 << max(size - 1, 1).bit_length()))
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
             "dict_size": dict_size}]


def _lzma_encode(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(data)))


def _lzma_decode(data: bytes, max_len: int, where: str) -> bytes:
    inflater = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(_LZMA_DICT))
    try:
        out = inflater.decompress(data, max_len + 1)
    except lzma.LZMAError as err:
        raise ValueError(f"{where} is not a valid lzma stream ({err})") from None
    if len(out) > max_len:
        raise _too_long(where, max_len)
    if not inflater.eof or inflater.unused_data:
        raise ValueError(f"{where} is a truncated lzma stream or has trailing bytes")
    return out


CODERS.register("lzma", Coder(_lzma_encode, _lzma_decode))


def _zstd_encode(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19, write_content_size=True,
                                    write_checksum=False).compress(data)


def _zstd_decode(data: bytes, max_len: int, where: str) -> bytes:
    import zstandard

    try:
        declared = zstandard.frame_content_size(data)
        if declared < 0:
            raise ValueError(f"{where}: the zstd frame does not declare its size")
        if declared > max_len:
            raise _too_long(where, max_len)
        inflater = zstandard.ZstdDecompressor().decompressobj()
        out = inflater.decompress(data)  # libzstd holds a frame to its declared size
    except zstandard.ZstdError as err:
        raise ValueError(f"{where} is not a valid zstd stream ({err})") from None
    if len(out) != declared or not inflater.eof or inflater.unused_data:
        raise ValueError(f"{where} is not exactly one complete zstd frame of {declared} bytes")
    return out


CODERS.register("zstd", Coder(_zstd_encode, _zstd_decode, _has("zstandard"), "zstandard"))


def _brotli_encode(data: bytes) -> bytes:
    import brotli

    lgwin = min(24, max(10, (len(data) - 1).bit_length()))
    quality = 11 if len(data) <= 4096 else 9  # 11 costs ~1 s per 30 KB part
    return brotli.compress(data, quality=quality, lgwin=lgwin)


def _brotli_decode(data: bytes, max_len: int, where: str) -> bytes:
    import brotli

    inflater = brotli.Decompressor()
    try:
        out = inflater.process(data, output_buffer_limit=max_len + 1)
    except brotli.error as err:
        raise ValueError(f"{where} is not a valid brotli stream ({err})") from None
    if len(out) > max_len:
        raise _too_long(where, max_len)
    if not inflater.is_finished():
        raise ValueError(f"{where} is a truncated brotli stream or has trailing bytes")
    return out


CODERS.register("brotli", Coder(_brotli_encode, _brotli_decode, _has("brotli"), "brotli"))


# --------------------------------------------------------------------------- rANS


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 35:
            raise ValueError(f"{where}: truncated or oversized varint in the ANS table")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _model(counts: np.ndarray):  # noqa: ANN202 - a constriction model
    import constriction

    probs = counts.astype(np.float64) / float(counts.sum())
    return constriction.stream.model.Categorical(probs, perfect=False)


def _ans_encode(data: bytes) -> bytes:
    import constriction

    symbols = np.frombuffer(data, dtype=np.uint8)
    counts = np.bincount(symbols, minlength=256)
    used = np.flatnonzero(counts)
    table = bytearray(_varint(symbols.size) + _varint(used.size))
    prev = -1
    for s in used.tolist():
        table += _varint(s - prev - 1) + _varint(int(counts[s]))
        prev = s
    if used.size <= 1:  # zero or one distinct value: the table says it all
        return bytes(table)
    index = np.zeros(256, dtype=np.int32)
    index[used] = np.arange(used.size, dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(index[symbols], _model(counts[used]))
    return bytes(table) + coder.get_compressed().astype("<u4").tobytes()


def _ans_decode(data: bytes, max_len: int, where: str) -> bytes:
    import constriction

    n, pos = _read_varint(data, 0, where)
    if n > max_len:
        raise _too_long(where, max_len)
    n_used, pos = _read_varint(data, pos, where)
    if n_used > 256:
        raise ValueError(f"{where}: the ANS table lists {n_used} byte values (at most 256)")
    values, counts, prev = [], [], -1
    for _ in range(n_used):
        gap, pos = _read_varint(data, pos, where)
        count, pos = _read_varint(data, pos, where)
        prev += gap + 1
        if prev > 255 or count < 1:
            raise ValueError(f"{where}: bad ANS table entry (value {prev}, count {count})")
        values.append(prev)
        counts.append(count)
    if sum(counts) != n:
        raise ValueError(f"{where}: the ANS table counts {sum(counts)} symbols, the part {n}")
    words = data[pos:]
    if n_used <= 1:
        if words:
            raise ValueError(f"{where}: trailing bytes after a one-value ANS table")
        return bytes(values) * n
    if len(words) % 4 or not words:
        raise ValueError(f"{where}: the ANS stream is not whole 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
    try:
        index = np.asarray(coder.decode(_model(np.asarray(counts)), n), dtype=np.int64)
    except Exception as err:  # noqa: BLE001 - constriction reports corrupt data in its own types
        raise ValueError(f"{where}: the ANS stream cannot be decoded ({err})") from None
    if not coder.is_empty():
        raise ValueError(f"{where}: the ANS stream has words left after {n} symbols")
    if not np.array_equal(np.bincount(index, minlength=n_used), np.asarray(counts)):
        raise ValueError(f"{where}: the decoded symbols do not match the ANS table's counts")
    return np.asarray(values, dtype=np.uint8)[index].tobytes()


CODERS.register("ans", Coder(_ans_encode, _ans_decode, _has("constriction"), "constriction"))


# --------------------------------------------------------------------------- byte shuffle


def _shuffled(base: str) -> Coder:
    """``base`` applied to the bytes regrouped by position in 4-byte words (all first bytes,
    then all second bytes, ...): float32 values of similar size share their sign/exponent
    bytes, which then compress well. Only for whole 4-byte words."""
    inner = CODERS.get(base)

    def encode(data: bytes) -> bytes:
        if len(data) % 4:
            raise ValueError("byte shuffle needs whole 4-byte words")
        planes = np.frombuffer(data, dtype=np.uint8).reshape(-1, 4).T
        return inner.encode(np.ascontiguousarray(planes).tobytes())

    def decode(data: bytes, max_len: int, where: str) -> bytes:
        out = inner.decode(data, max_len, where)
        if len(out) % 4:
            raise ValueError(f"{where}: a byte-shuffled part must be whole 4-byte words")
        return np.ascontiguousarray(np.frombuffer(out, dtype=np.uint8).reshape(4, -1).T
                                    ).tobytes()

    return Coder(encode, decode, inner.available, inner.package)


for _base in ("lzma", "zstd", "brotli", "ans"):
    CODERS.register(f"{_base}-shuffle4", _shuffled(_base))


# --------------------------------------------------------------------------- helpers


def available_coders() -> tuple[str, ...]:
    """Names of the coders whose packages are installed."""
    return tuple(name for name, coder in CODERS.items() if coder.available())


#: Parts larger than this only try the fast coders (the slow ones take seconds per part).
LARGE_PART = 16 * 2**10
FAST_CODERS = ("ans",)


def encode_best(data: bytes, coders: tuple[str, ...] | None = None, *, floats: bool = False
                ) -> tuple[str, bytes]:
    """``(coder, stored)`` of the smallest encoding of ``data`` (ties: earlier coder).

    By default every installed coder is tried, the byte-shuffled ones only for ``floats``
    (float32 words), and only :data:`FAST_CODERS` for parts over :data:`LARGE_PART` bytes.
    """
    if coders is None:
        coders = FAST_CODERS if len(data) > LARGE_PART else available_coders()
    best = ("none", data)
    for name in coders:
        shuffled = name.endswith("-shuffle4")
        if name == "none" or (shuffled and (not floats or len(data) % 4)) or \
                not CODERS.get(name).available():
            continue
        stored = CODERS.get(name).encode(data)
        if len(stored) < len(best[1]):
            best = (name, stored)
    return best


def decode_part(coder: str, stored: bytes, max_len: int, where: str) -> bytes:
    """Decode one stored part with ``coder`` to at most ``max_len`` bytes."""
    if coder not in CODERS:
        raise ValueError(f"{where}: unknown coder {coder!r}; known: {list(CODERS.names())}")
    entry = CODERS.get(coder)
    if not entry.available():
        raise ValueError(f"{where} is coded with {coder!r}, which needs the package "
                         f"{entry.package!r}: pip install {entry.package}")
    return entry.decode(stored, max_len, where)


def entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 empirical entropy of ``symbols`` in bits (``n * H``)."""
    counts = np.bincount(np.asarray(symbols, dtype=np.int64).reshape(-1))
    counts = counts[counts > 0].astype(np.float64)
    n = counts.sum()
    return float(-(counts * np.log2(counts / n)).sum()) if n else 0.0
