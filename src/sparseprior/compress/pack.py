"""The packed file format: a really compressed model file with a header and checksums.

Layout (all integers little-endian)::

    offset 0   magic      4 bytes  b"SPPK"
           4   version    uint16   (1)
           6   flags      uint16   bit 0: the header is zlib-compressed (set by the writer)
           8   header_len uint32   length H of the (compressed) header
          12   header     H bytes  UTF-8 JSON (compact), zlib-compressed when flags & 1
      12 + H   payload    P bytes  per-tensor payloads, back to back
  12 + H + P   sha256     32 bytes SHA-256 of every byte before it

The JSON header holds ``format``, ``version``, ``architecture`` (see
:mod:`sparseprior.compress.arch`: registry model name, build arguments, the type and size of
every layer), ``payload_bytes`` (``P``), free ``meta`` and ``tensors``: one record per
``state_dict`` entry, in order::

    {"name", "shape", "dtype", "encoding", "offset", "parts": [[part, bytes], ...], "crc32", ...}

Encodings:

* ``codes``: a quantized tensor (its layer has a :class:`~.quantize.QuantSpec`, or it is a
  SmartExchange ``Ce``). Part ``positions`` (only when the tensor is sparse, see below), part
  ``codes`` (``bits``-bit codes of the *non-zero* entries — or of all entries when dense —
  bit-packed LSB first), part ``scale`` (float32 per channel or per tensor) and, for asymmetric
  uniform codes, part ``zero_point`` (uint8). Fields ``quant`` (the spec), ``nnz``.
* ``float``: float32 values, either all of them (part ``values``) or only the non-zeros
  (parts ``positions`` + ``values``), whichever is smaller.
* ``raw``: any other tensor (e.g. BatchNorm's int64 counter) as its raw bytes (part ``values``).

Positions of non-zeros (``positions`` field) are stored as whichever is smaller:

* ``bitmap``: one bit per entry (``numel`` bits);
* ``delta``: a stream of ``b``-bit symbols (``delta_bits`` = b, chosen to minimise the size):
  a symbol ``v < 2^b - 1`` means "skip ``v`` zeros, then a non-zero"; ``v = 2^b - 1`` means "skip
  ``2^b - 1`` zeros" (for gaps that do not fit; the relative indexing of Deep Compression).

Every part is padded to whole bytes only (padding bits are zero). Each tensor's bytes carry a
CRC32 and the whole file a SHA-256, so a corrupted or truncated file raises ``ValueError``
instead of loading wrong weights. The size reported for a model is ``os.path.getsize`` of this
file.

Checksums catch accidents, not attacks: the reader also checks every header field and bounds
every allocation (see :mod:`sparseprior.compress.packschema`): part lengths are exact, delta
streams are consumed to the last byte, the architecture is built on the meta device and must
match the records, and the total size is capped (``max_params``/``max_bytes``, or the
``SPARSEPRIOR_MAX_PARAMS``/``SPARSEPRIOR_MAX_BYTES`` environment variables).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sparseprior.common.checkpoint import atomic_write_bytes
from sparseprior.compress import entropy
from sparseprior.compress import packschema as schema
from sparseprior.compress.arch import ARCH_VERSION, build_from_architecture, describe_architecture
from sparseprior.compress.packschema import ReadLimits, TensorRecord
from sparseprior.compress.quantize import (
    QuantSpec,
    dequantize,
    quant_spec_of,
    quantize_tensor,
)

MAGIC = b"SPPK"
VERSION = 1
VERSION_V2 = 2
READABLE_VERSIONS = (1, 2)
FORMAT = "sparseprior-packed"
_PREFIX = struct.Struct("<4sHHI")
FLAG_ZLIB_HEADER = 1
_DIGEST = 32
POSITION_ENCODINGS = ("auto", "bitmap", "delta")


# --------------------------------------------------------------------------- bit packing


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative ints ``< 2^bits`` (1-D) into ``ceil(len * bits / 8)`` bytes, LSB first."""
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >= (1 << bits)):
        raise ValueError(f"values must lie in [0, 2^{bits}); got [{values.min()}, "
                         f"{values.max()}]")
    bit_matrix = (values[:, None] >> np.arange(bits)) & 1
    return np.packbits(bit_matrix.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int, *, check: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` ints of ``bits`` bits (int64 array).

    With ``check`` the stream must be exactly ``ceil(count * bits / 8)`` bytes with zero
    padding bits; without, ``data`` may be longer (only the first values are read).
    """
    need = (count * bits + 7) // 8
    if len(data) != need and (check or len(data) < need):
        raise ValueError(f"bit stream has {len(data)} bytes, expected {need} for {count} "
                         f"values of {bits} bits")
    if check:
        check_padding(data, count * bits, "bit stream")
    raw = np.frombuffer(data, dtype=np.uint8, count=need)
    if bits == 8:
        return raw.astype(np.int64)
    flat = np.unpackbits(raw, count=count * bits, bitorder="little").reshape(count, bits)
    out = np.zeros(count, dtype=np.int64)
    for i in range(bits):  # one bit plane at a time: count * (bits + 8) bytes at most
        out |= flat[:, i].astype(np.int64) << i
    return out


def check_padding(data: bytes, used_bits: int, where: str) -> None:
    """The bits of ``data`` after its first ``used_bits`` (the last byte's padding) must be 0."""
    if used_bits % 8 and len(data) * 8 >= used_bits and data[used_bits // 8] >> (used_bits % 8):
        raise ValueError(f"{where}: non-zero padding bits after the last value")


# --------------------------------------------------------------------------- positions


def _gaps(index: np.ndarray) -> np.ndarray:
    """Zeros skipped before each non-zero (flat, sorted indices)."""
    return np.diff(np.concatenate([[-1], index])) - 1


def delta_symbols(gaps: np.ndarray, bits: int) -> int:
    """Number of ``bits``-bit symbols the delta code needs for these gaps."""
    esc = (1 << bits) - 1
    return int(gaps.size + (gaps // esc).sum()) if gaps.size else 0


def position_cost(mask: np.ndarray) -> tuple[str, int, int]:
    """``(encoding, delta_bits, bits)`` of the cheapest position code of a flat bool mask."""
    best = ("bitmap", 0, int(mask.size))
    gaps = _gaps(np.flatnonzero(mask))
    for b in range(1, 17):
        bits = delta_symbols(gaps, b) * b
        if bits < best[2]:
            best = ("delta", b, bits)
    return best


def encode_positions(mask: np.ndarray, encoding: str = "auto") -> tuple[str, int, bytes]:
    """``(encoding, delta_bits, bytes)`` for a flat bool mask (``encoding``: auto, bitmap,
    delta)."""
    if encoding not in POSITION_ENCODINGS:
        raise ValueError(f"position encoding {encoding!r} is not one of {POSITION_ENCODINGS}")
    kind, b, _ = position_cost(mask)
    if encoding == "bitmap" or (encoding == "auto" and kind == "bitmap"):
        return "bitmap", 0, np.packbits(mask.astype(np.uint8), bitorder="little").tobytes()
    if encoding == "delta" and kind == "bitmap":  # forced delta: pick its best width
        costs = {w: delta_symbols(_gaps(np.flatnonzero(mask)), w) * w for w in range(1, 17)}
        b = min(costs, key=costs.__getitem__)
    return "delta", b, encode_delta(mask, b)


def encode_delta(mask: np.ndarray, bits: int) -> bytes:
    """The ``bits``-bit delta stream of a flat bool mask (see the module docstring)."""
    esc = (1 << bits) - 1
    gaps = _gaps(np.flatnonzero(mask))
    escapes = gaps // esc
    symbols = np.full(int(escapes.sum()) + gaps.size, esc, dtype=np.int64)
    symbols[np.cumsum(escapes + 1) - 1] = gaps % esc
    return pack_bits(symbols, bits)


def decode_positions(data: bytes, encoding: str, delta_bits: int, numel: int, nnz: int,
                     where: str = "positions") -> np.ndarray:
    """Flat bool mask of ``numel`` entries with exactly ``nnz`` ``True``.

    Strict: a bitmap is ``ceil(numel / 8)`` bytes, a delta stream ends with its ``nnz``-th
    non-zero (to the byte), padding bits are zero; anything else is a ``ValueError``.
    """
    if encoding == "bitmap":
        if len(data) != (numel + 7) // 8:
            raise ValueError(f"{where}: bitmap has {len(data)} bytes, expected "
                             f"{(numel + 7) // 8} for {numel} entries")
        check_padding(data, numel, where)
        mask = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel,
                             bitorder="little").astype(bool)
        found = int(np.count_nonzero(mask))
    elif encoding == "delta":
        index = delta_index(data, delta_bits, numel, nnz, where)
        mask = np.zeros(numel, dtype=bool)
        mask[index] = True
        found = index.size
    else:
        raise ValueError(f"{where}: unknown position encoding {encoding!r}")
    if found != nnz:
        raise ValueError(f"{where}: positions decode to {found} non-zeros, expected {nnz}")
    return mask


def delta_index(data: bytes, bits: int, numel: int, nnz: int, where: str) -> np.ndarray:
    """Sorted flat indices of the ``nnz`` non-zeros of a ``bits``-bit delta stream, which must
    end with its ``nnz``-th non-zero (to the byte, zero padding) and stay below ``numel``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"{where}: delta_bits must be an integer in [1, 16], got {bits!r}")
    symbols = unpack_bits(data, bits, len(data) * 8 // bits, check=False)
    used = gaps_used(symbols, (1 << bits) - 1, nnz, where)
    if (used * bits + 7) // 8 != len(data):
        raise ValueError(f"{where}: the delta stream has {len(data)} bytes, but its {nnz} "
                         f"non-zeros end after {(used * bits + 7) // 8}")
    check_padding(data, used * bits, where)
    return gap_index(symbols[:used], (1 << bits) - 1, numel, where)


def gaps_used(symbols: np.ndarray, esc: int, nnz: int, where: str) -> int:
    """How many gap symbols the first ``nnz`` non-zeros use (``esc``: skip ``esc`` zeros)."""
    real = np.flatnonzero(symbols != esc)
    if real.size < nnz:
        raise ValueError(f"{where}: the gap stream holds {real.size} non-zeros, expected {nnz}")
    return int(real[nnz - 1]) + 1 if nnz else 0


def gap_index(symbols: np.ndarray, esc: int, numel: int, where: str) -> np.ndarray:
    """Flat indices from gap symbols; ``ValueError`` when they pass ``numel``."""
    real = symbols != esc
    index = (np.cumsum(symbols + real) - 1)[real]
    if index.size and index[-1] >= numel:
        raise ValueError(f"{where}: positions reach index {int(index[-1])}, beyond the "
                         f"tensor's {numel} entries")
    return index


# --------------------------------------------------------------------------- tensors


def quant_targets(model: nn.Module) -> dict[str, tuple[QuantSpec, Tensor | None]]:
    """``state_dict`` name -> (spec, fixed scale or None) of every tensor stored as codes."""
    out: dict[str, tuple[QuantSpec, Tensor | None]] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        own = getattr(module, "quant_targets", None)
        if callable(own):
            out.update({prefix + p: v for p, v in own().items()})
        spec = quant_spec_of(module)
        if spec is not None:
            out[prefix + "weight"] = (spec, None)
    return out


def _encode_codes(t: Tensor, spec: QuantSpec, scale: Tensor | None, positions: str
                  ) -> tuple[dict[str, Any], list[bytes]]:
    q = quantize_tensor(t, spec, scale)
    values = q.dequantize()
    flat_codes = q.codes.reshape(-1).numpy()
    nonzero = (values != 0).reshape(-1).numpy()
    nnz = int(nonzero.sum())
    record: dict[str, Any] = {"encoding": "codes", "quant": spec.to_dict(), "nnz": nnz,
                              "scale_len": int(q.scale.numel())}
    kind, b, bits = position_cost(nonzero)
    parts: dict[str, bytes] = {}
    if bits + nnz * spec.bits < nonzero.size * spec.bits or positions != "auto":
        kind, b, parts["positions"] = encode_positions(nonzero, positions)
        record.update(positions=kind, delta_bits=b)
        flat_codes = flat_codes[nonzero]
    else:
        record["positions"] = None
    parts["codes"] = pack_bits(flat_codes, spec.bits)
    parts["scale"] = q.scale.float().numpy().astype("<f4").tobytes()
    if spec.scheme == "uniform" and not spec.symmetric:
        parts["zero_point"] = q.zero_point.numpy().astype(np.uint8).tobytes()
    record["parts"] = [[k, len(v)] for k, v in parts.items()]
    return record, list(parts.values())


def _encode_float(t: Tensor, positions: str) -> tuple[dict[str, Any], list[bytes]]:
    flat = t.detach().float().cpu().reshape(-1).numpy().astype("<f4")
    nonzero = flat != 0
    nnz = int(nonzero.sum())
    kind, b, bits = position_cost(nonzero)
    parts: dict[str, bytes] = {}
    record: dict[str, Any] = {"encoding": "float", "nnz": nnz}
    if bits + 32 * nnz < 32 * flat.size or positions != "auto":
        kind, b, parts["positions"] = encode_positions(nonzero, positions)
        record.update(positions=kind, delta_bits=b)
        flat = flat[nonzero]
    else:
        record["positions"] = None
    parts["values"] = flat.tobytes()
    record["parts"] = [[k, len(v)] for k, v in parts.items()]
    return record, list(parts.values())


def _encode_raw(t: Tensor) -> tuple[dict[str, Any], list[bytes]]:
    data = t.detach().cpu().contiguous().numpy().tobytes()
    return {"encoding": "raw", "parts": [["values", len(data)]]}, [data]


# --------------------------------------------------------------------------- version 2


def _position_options(nonzero: np.ndarray, positions: str) -> list[tuple[str, int, bytes]]:
    """Candidate ``(kind, delta_bits, bytes)`` position codes of a flat bool mask: the bitmap,
    the narrowest delta code and the byte-aligned one (8 bits, for the entropy coders)."""
    options = []
    if positions in ("auto", "bitmap"):
        options.append(("bitmap", 0, np.packbits(nonzero.astype(np.uint8),
                                                 bitorder="little").tobytes()))
    if positions in ("auto", "delta"):
        _, b, data = encode_positions(nonzero, "delta")
        options.append(("delta", b, data))
        if b != 8:
            options.append(("delta", 8, encode_delta(nonzero, 8)))
    return options


def _best_of(options: list[tuple[dict[str, Any], bytes]], floats: bool = False
             ) -> tuple[dict[str, Any], str, bytes]:
    """``(fields, coder, stored)`` of the option whose best coding is smallest."""
    best: tuple[dict[str, Any], str, bytes] | None = None
    for fields, raw in options:
        coder, stored = entropy.encode_best(raw, floats=floats)
        if best is None or len(stored) < len(best[2]):
            best = (fields, coder, stored)
    assert best is not None
    return best


def _layouts(values_of: Any, nonzero: np.ndarray, positions: str, value_options: Any,
             floats: bool = False) -> tuple[dict[str, Any], list[tuple[str, str, bytes]]]:
    """Smallest of storing every entry or only the non-zeros (with the best position code).
    ``value_options(flat values)`` lists ``(fields, raw bytes)`` candidates for the values.
    Returns the record fields and ``(part, coder, stored)`` of positions and values."""
    best: tuple[dict[str, Any], list[tuple[str, str, bytes]]] | None = None
    layouts: list[tuple[str, int, bytes] | None] = [None] if positions == "auto" else []
    layouts += _position_options(nonzero, positions)
    for layout in layouts:
        fields: dict[str, Any] = {"positions": None}
        parts: list[tuple[str, str, bytes]] = []
        if layout is not None:
            fields.update(positions=layout[0], delta_bits=layout[1])
            _, coder, stored = _best_of([({}, layout[2])])
            parts.append(("positions", coder, stored))
        chosen, coder, stored = _best_of(value_options(values_of(layout is not None)), floats)
        fields.update(chosen)
        parts.append(("values", coder, stored))
        if best is None or sum(len(p[2]) for p in parts) < sum(len(p[2]) for p in best[1]):
            best = (fields, parts)
    assert best is not None
    return best


def exact_float16(values: np.ndarray) -> np.ndarray:
    """``values`` as little-endian float16 when every one of them is a float16 value (2 bytes
    each, lossless), else as little-endian float32: what format v2 stores for scales and
    float tensors."""
    f32 = np.asarray(values, dtype="<f4")
    half = f32.astype("<f2")
    return half if f32.size and np.array_equal(half.astype("<f4"), f32) else f32


def _encode_codes_v2(t: Tensor, spec: QuantSpec, scale: Tensor | None, positions: str
                     ) -> tuple[dict[str, Any], list[tuple[str, str, bytes]]]:
    q = quantize_tensor(t, spec, scale)
    flat_codes = q.codes.reshape(-1).numpy()
    nonzero = (q.dequantize() != 0).reshape(-1).numpy()
    widths = sorted({spec.bits, 8})

    def code_options(codes: np.ndarray) -> list[tuple[dict[str, Any], bytes]]:
        return [({"code_width": w}, pack_bits(codes, w)) for w in widths]

    fields, parts = _layouts(lambda sparse: flat_codes[nonzero] if sparse else flat_codes,
                             nonzero, positions, code_options)
    parts = [("codes" if p == "values" else p, c, d) for p, c, d in parts]
    scales = exact_float16(q.scale.float().numpy())
    exact_half = scales.dtype == np.dtype("<f2")
    parts.append(("scale", *entropy.encode_best(scales.tobytes(), floats=not exact_half)))
    if spec.scheme == "uniform" and not spec.symmetric:
        parts.append(("zero_point", *entropy.encode_best(
            q.zero_point.numpy().astype(np.uint8).tobytes())))
    record = {"encoding": "codes", "quant": spec.to_dict(), "nnz": int(nonzero.sum()),
              "scale_len": int(q.scale.numel()), "scale_dtype": "float16" if exact_half
              else "float32", **fields}
    return record, parts


def _encode_float_v2(t: Tensor, positions: str
                     ) -> tuple[dict[str, Any], list[tuple[str, str, bytes]]]:
    flat = t.detach().float().cpu().reshape(-1).numpy()
    nonzero = flat != 0
    stored = exact_float16(flat)
    exact_half = stored.dtype == np.dtype("<f2")
    fields, parts = _layouts(lambda sparse: stored[nonzero] if sparse else stored, nonzero,
                             positions, lambda v: [({}, v.tobytes())], floats=not exact_half)
    extra = {"value_dtype": "float16"} if exact_half else {}
    return {"encoding": "float", "nnz": int(nonzero.sum()), **fields, **extra}, parts


def _encode_raw_v2(t: Tensor) -> tuple[dict[str, Any], list[tuple[str, str, bytes]]]:
    data = t.detach().cpu().contiguous().numpy().tobytes()
    floats = t.dtype.is_floating_point and t.element_size() == 4
    return {"encoding": "raw"}, [("values", *entropy.encode_best(data, floats=floats))]


def _encode_v2(name: str, t: Tensor, targets: Mapping[str, Any], positions: str
               ) -> tuple[dict[str, Any], list[bytes]]:
    if name in targets:
        record, parts = _encode_codes_v2(t, *targets[name], positions)
    elif t.dtype == torch.float32:
        record, parts = _encode_float_v2(t, positions)
    else:
        record, parts = _encode_raw_v2(t)
    record["parts"] = [[p, len(d)] for p, _, d in parts]
    record["coders"] = [c for _, c, _ in parts]
    return record, [d for _, _, d in parts]


def _encode_v1(name: str, t: Tensor, targets: Mapping[str, Any], positions: str
               ) -> tuple[dict[str, Any], list[bytes]]:
    if name in targets:
        spec, scale = targets[name]
        return _encode_codes(t, spec, scale, positions)
    if t.dtype == torch.float32:
        return _encode_float(t, positions)
    return _encode_raw(t)


_ENCODERS = {1: _encode_v1, 2: _encode_v2}


def _part_bytes(record: Mapping[str, Any]) -> int:
    return sum(int(part[1]) for part in record["parts"])


def _split_parts(rec: TensorRecord, blob: bytes) -> dict[str, bytes]:
    parts, start = {}, 0
    for key, length, _coder in rec.parts:
        parts[key] = blob[start:start + length]
        start += length
    return parts


def _check_part_lengths(rec: TensorRecord, parts: Mapping[str, bytes]) -> None:
    """Each stored (uncoded) part must have the exact length its fields imply."""
    for key, (lo, hi) in schema.raw_part_sizes(rec).items():
        if not lo <= len(parts[key]) <= hi:
            want = str(lo) if lo == hi else f"{lo}..{hi}"
            raise ValueError(f"{rec.where}: part {key!r} has {len(parts[key])} bytes, its "
                             f"fields imply {want}")


def _decode_mask(rec: TensorRecord, parts: Mapping[str, bytes]) -> np.ndarray | None:
    if not rec.positions:
        return None
    assert rec.nnz is not None
    return decode_positions(parts["positions"], rec.positions, rec.delta_bits, rec.numel,
                            rec.nnz, f"{rec.where}: positions")


def _check_support(rec: TensorRecord, nonzero: np.ndarray, mask: np.ndarray | None) -> None:
    """The writer stores positions of exactly the non-zero values (``nnz`` of them)."""
    if mask is not None and not bool(nonzero.all()):
        raise ValueError(f"{rec.where}: a value stored at a non-zero position is zero")
    if mask is None and int(np.count_nonzero(nonzero)) != rec.nnz:
        raise ValueError(f"{rec.where}: {int(np.count_nonzero(nonzero))} non-zero values, "
                         f"the header says nnz={rec.nnz}")


def _decode_raw(rec: TensorRecord, parts: Mapping[str, bytes]) -> Tensor:
    dtype = schema.DTYPES[rec.dtype][0]
    if rec.numel == 0:
        return torch.empty(rec.shape, dtype=dtype)
    return torch.frombuffer(bytearray(parts["values"]), dtype=dtype).reshape(rec.shape).clone()


def _decode_float(rec: TensorRecord, parts: Mapping[str, bytes]) -> Tensor:
    mask = _decode_mask(rec, parts)
    vals = np.frombuffer(parts["values"],
                         dtype="<f2" if rec.value_dtype == "float16" else "<f4").astype("<f4")
    _check_support(rec, vals != 0, mask)
    out = np.zeros(rec.numel, dtype=np.float32)
    out[mask if mask is not None else slice(None)] = vals
    return torch.from_numpy(out).reshape(rec.shape)


def _scales(rec: TensorRecord, data: bytes) -> Tensor:
    dtype = "<f2" if rec.scale_dtype == "float16" else "<f4"
    scale = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"{rec.where}: scales must be finite and positive")
    return torch.from_numpy(scale)


def _decode_codes(rec: TensorRecord, parts: Mapping[str, bytes],
                  codes: np.ndarray | None = None) -> Tensor:
    """Dequantized values of a ``codes`` record (``codes``: already decoded symbols)."""
    spec = rec.quant
    assert spec is not None and rec.scale_len is not None
    mask = _decode_mask(rec, parts)
    if codes is None:
        codes = unpack_bits(parts["codes"], rec.code_width, rec.count)
    if codes.size != rec.count or (codes.size and (codes.min() < 0 or
                                                   codes.max() >= 1 << spec.bits)):
        raise ValueError(f"{rec.where}: expected {rec.count} codes in [0, 2^{spec.bits}), "
                         f"got {codes.size}")
    scale = _scales(rec, parts["scale"])
    zp = _zero_points(spec, parts, rec.scale_len)
    if zp.numel() and int(zp.max()) >= 1 << spec.bits:
        raise ValueError(f"{rec.where}: a zero point is beyond the {spec.bits}-bit code range")
    if mask is not None:  # entries off the support hold the code of 0, i.e. the zero point
        full = np.repeat(zp.numpy().astype(np.int64), rec.numel // rec.scale_len)
        full[mask] = codes
    else:
        full = codes
    codes_t = torch.from_numpy(full).to(torch.int32).reshape(rec.shape)
    values = dequantize(codes_t, scale, zp, spec)
    flat = values.reshape(-1).numpy()
    _check_support(rec, flat[mask] != 0 if mask is not None else flat != 0, mask)
    return values


def _zero_points(spec: QuantSpec, parts: Mapping[str, bytes], n: int) -> Tensor:
    """Per-channel zero points (the code of value 0): stored for asymmetric codes, else
    ``2^(bits-1) - 1`` (symmetric uniform) or 0 (pow2)."""
    if "zero_point" in parts:
        return torch.from_numpy(np.frombuffer(parts["zero_point"], dtype=np.uint8)
                                .astype(np.int32))
    if spec.scheme == "uniform":
        return torch.full((n,), 2 ** (spec.bits - 1) - 1, dtype=torch.int32)
    return torch.zeros(n, dtype=torch.int32)


_DECODERS = {"raw": _decode_raw, "float": _decode_float, "codes": _decode_codes}


def _decode_tensor(rec: TensorRecord, blob: bytes) -> Tensor:
    stored = _split_parts(rec, blob)
    bounds = schema.raw_part_sizes(rec)
    parts = {key: stored[key] if coder == "none" else
             entropy.decode_part(coder, stored[key], bounds[key][1], f"{rec.where}: part {key!r}")
             for key, _, coder in rec.parts}
    _check_part_lengths(rec, parts)
    return _DECODERS[rec.encoding](rec, parts)


# --------------------------------------------------------------------------- files


@dataclasses.dataclass
class PackInfo:
    """What :func:`pack` wrote: ``path``, ``size`` (``os.path.getsize``, bytes), header bytes,
    and per-tensor payload bytes."""

    path: Path
    size: int
    header_bytes: int
    tensor_bytes: dict[str, int]


def pack(model: nn.Module, path: str | Path, *, model_name: str,
         build: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None,
         positions: str = "auto", version: int = VERSION_V2) -> PackInfo:
    """Write ``model`` (a registry model ``model_name`` built with ``build``, possibly
    compressed) to a packed file at ``path`` (atomic write).

    Quantized tensors are stored as codes (see the module docstring), other floating tensors
    as float32 (dense or non-zeros only), the rest raw. ``positions`` forces the position code
    (``'bitmap'`` or ``'delta'``) for every sparse tensor; ``'auto'`` picks the smaller.
    ``version=2`` (default) also entropy-codes every part with the smallest of the installed
    coders (:mod:`~.entropy`); ``version=1`` writes the plain bit-packed format.
    """
    if positions not in POSITION_ENCODINGS:
        raise ValueError(f"positions={positions!r} is not one of {POSITION_ENCODINGS}")
    if version not in _ENCODERS:
        raise ValueError(f"version={version!r} is not one of {sorted(_ENCODERS)}")
    arch = describe_architecture(model, model_name, build or {})
    targets = quant_targets(model)
    records, chunks, offset = [], [], 0
    for name, t in _canonical_state(model, arch).items():
        record, parts = _ENCODERS[version](name, t, targets, positions)
        blob = b"".join(parts)
        record.update(name=name, shape=list(t.shape), dtype=str(t.dtype).replace("torch.", ""),
                      offset=offset, crc32=zlib.crc32(blob))
        records.append(record)
        chunks.append(blob)
        offset += len(blob)
    header = {"format": FORMAT, "version": version, "architecture": arch,
              "payload_bytes": offset, "meta": dict(meta or {}), "tensors": records}
    _self_check(header, version, offset)
    head = zlib.compress(json.dumps(header, separators=(",", ":"), sort_keys=True)
                         .encode("utf-8"), 9)
    body = _PREFIX.pack(MAGIC, version, FLAG_ZLIB_HEADER, len(head)) + head + b"".join(chunks)
    data = body + hashlib.sha256(body).digest()
    path = atomic_write_bytes(path, data)
    return PackInfo(path, os.path.getsize(path), len(head),
                    {r["name"]: _part_bytes(r) for r in records})


@dataclasses.dataclass
class PackedFile:
    """A packed file whose header passed every check: the raw ``header`` dict, its typed
    ``records``, the ``payload`` bytes and the ``model_meta`` (the architecture built on the
    meta device)."""

    path: Path
    version: int
    header: dict[str, Any]
    records: list[TensorRecord]
    payload: bytes
    model_meta: nn.Module


def _reject_constant(name: str) -> Any:
    raise ValueError(f"the header holds the non-JSON constant {name}")


def _parse_json(head: bytes) -> Any:
    try:
        return json.loads(head.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as err:
        raise ValueError(f"its header is not valid JSON ({type(err).__name__}: "
                         f"{str(err)[:120]})") from None


def _read_prefix(data: bytes, where: str, limits: ReadLimits) -> tuple[int, Any]:
    """Check size, magic, version, flags and SHA-256; return ``(version, header JSON)``."""
    if len(data) < _PREFIX.size + _DIGEST:
        raise ValueError(f"{where} is truncated: {len(data)} bytes is shorter than the "
                         f"{_PREFIX.size + _DIGEST}-byte minimum")
    magic, version, flags, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"{where} is not a sparseprior packed file (magic {magic!r}, "
                         f"expected {MAGIC!r})")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{where} has format version {version}; this reader supports "
                         f"{list(READABLE_VERSIONS)}")
    if flags & ~FLAG_ZLIB_HEADER:
        raise ValueError(f"{where} has unknown flags 0x{flags:04x}; allowed: "
                         f"0x{FLAG_ZLIB_HEADER:04x} (zlib header)")
    if _PREFIX.size + head_len + _DIGEST > len(data):
        raise ValueError(f"{where} is truncated: its header claims {head_len} bytes but the "
                         f"file has {len(data)} bytes")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise ValueError(f"{where} is corrupted: SHA-256 checksum mismatch")
    head = data[_PREFIX.size:_PREFIX.size + head_len]
    if flags & FLAG_ZLIB_HEADER:
        head = schema.inflate_bounded(head, limits.max_header_bytes, f"{where}: the header")
    elif len(head) > limits.max_header_bytes:
        raise ValueError(f"{where}: the header has {len(head)} bytes, more than "
                         f"{limits.max_header_bytes}")
    try:
        return version, _parse_json(head)
    except ValueError as err:
        raise ValueError(f"{where} is corrupted: {err}") from None


def check_header(header: Any, version: int, payload_bytes: int, limits: ReadLimits
                 ) -> tuple[list[TensorRecord], nn.Module]:
    """Check a decoded header against the format (see :mod:`~.packschema`): returns the typed
    records and the architecture built on the meta device. ``ValueError`` on any problem."""
    schema.check_keys(header, {"format", "version", "architecture", "payload_bytes", "meta",
                               "tensors"}, "the header")
    schema.check_str(header["format"], "format", "the header", (FORMAT,))
    schema.check_int(header["version"], "version", version, version, "the header")
    schema.check_int(header["payload_bytes"], "payload_bytes", payload_bytes, payload_bytes,
                     "the header")
    if not isinstance(header["meta"], dict):
        raise ValueError("the header: field 'meta' must be a JSON object")
    tensors = header["tensors"]
    if not isinstance(tensors, list) or len(tensors) > schema.MAX_TENSORS:
        raise ValueError(f"the header: field 'tensors' must be a list of at most "
                         f"{schema.MAX_TENSORS} records")
    records = [schema.parse_record(raw, i, version, entropy.CODERS.names())
               for i, raw in enumerate(tensors)]
    schema.check_offsets(records, payload_bytes)
    for rec in records:
        schema.check_part_layout(rec)
    model = _check_architecture(header["architecture"], records, limits)
    return records, model


def _check_architecture(arch: Any, records: list[TensorRecord], limits: ReadLimits
                        ) -> nn.Module:
    from sparseprior.models import build_model

    schema.check_architecture_fields(arch, ARCH_VERSION)
    build = {k: tuple(v) if isinstance(v, list) else v for k, v in arch["build"].items()}
    base = schema.meta_build(lambda: build_model(arch["model"], **build),
                             f"the registry model {arch['model']!r}", limits)
    # the real build starts from the registry model, so it must fit the cap too
    schema.check_size(base, f"the registry model {arch['model']!r} with these build arguments",
                      limits)
    model = schema.meta_build(lambda: build_from_architecture(arch), "the architecture", limits)
    schema.check_layers_against_base(model, base)
    schema.check_state_matches(model, records, limits)
    schema.check_codes_match(quant_targets(model), records)
    return model


def load_packed(path: str | Path, *, max_params: int | None = None,
                max_bytes: int | None = None) -> PackedFile:
    """Read and check a packed file (size cap, magic, version, SHA-256, bounded header
    inflate, the header schema and its consistency with the architecture). Tensors are not
    decoded yet. Raises ``ValueError`` naming the file and the problem."""
    limits = ReadLimits.resolve(max_params, max_bytes)
    path = Path(path)
    where = f"packed file {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where} not found")
    size = path.stat().st_size
    if size > limits.file_bytes:
        raise ValueError(f"{where} has {size:,} bytes, more than the reader's limit "
                         f"max_bytes={limits.file_bytes:,} (raise it with max_bytes= or "
                         f"{schema.ENV_MAX_BYTES} if you trust this file)")
    data = path.read_bytes()
    version, header = _read_prefix(data, where, limits)
    head_len = _PREFIX.unpack_from(data)[3]
    payload = data[_PREFIX.size + head_len:-_DIGEST]
    try:
        records, model = check_header(header, version, len(payload), limits)
    except ValueError as err:
        raise ValueError(f"{where} is invalid: {err}") from None
    return PackedFile(path, version, header, records, payload, model)


def _canonical_state(model: nn.Module, arch: Mapping[str, Any]) -> dict[str, Tensor]:
    """``model.state_dict()`` in the order the architecture's own model lists its tensors
    (a layer that re-registered a parameter, e.g. after fine-tuning, may list them otherwise);
    the reader requires that order."""
    state = model.state_dict()
    total = sum(t.numel() for t in state.values())
    limits = ReadLimits(max_params=max(total, schema.DEFAULT_MAX_PARAMS))
    ref = schema.meta_build(lambda: build_from_architecture(arch), "the architecture", limits)
    order = list(ref.state_dict())
    if set(order) != set(state):
        return state  # the self-check names what differs
    return {name: state[name] for name in order}


def _self_check(header: dict[str, Any], version: int, payload_bytes: int) -> None:
    """Run the reader's checks on a header about to be written, so :func:`pack` never writes
    a file :func:`unpack` refuses (the size cap aside)."""
    roundtrip = json.loads(json.dumps(header))
    total = sum(math.prod(r["shape"]) for r in header["tensors"])
    limits = ReadLimits(max_params=max(total, schema.DEFAULT_MAX_PARAMS))
    try:
        check_header(roundtrip, version, payload_bytes, limits)
    except ValueError as err:
        raise ValueError(f"this model cannot be packed: {err}") from None


def read_header(path: str | Path, *, max_params: int | None = None,
                max_bytes: int | None = None) -> tuple[dict[str, Any], bytes]:
    """Check a packed file (see :func:`load_packed`) and return ``(header, payload)``.

    Raises ``ValueError`` naming the problem for a truncated, corrupted, foreign or
    inconsistent file.
    """
    packed = load_packed(path, max_params=max_params, max_bytes=max_bytes)
    return packed.header, packed.payload


def _decode_all(packed: PackedFile) -> dict[str, Tensor]:
    where = f"packed file {str(packed.path)!r}"
    state = {}
    for rec in packed.records:
        blob = packed.payload[rec.offset:rec.offset + rec.stored_bytes]
        if zlib.crc32(blob) != rec.crc32:
            raise ValueError(f"{where} is corrupted: CRC32 mismatch in {rec.where}")
        try:
            state[rec.name] = _decode_tensor(rec, blob)
        except ValueError as err:
            msg = str(err) if rec.where in str(err) else f"{rec.where}: {err}"
            raise ValueError(f"{where} is invalid: {msg}") from None
    return state


def unpack_state(path: str | Path, *, max_params: int | None = None,
                 max_bytes: int | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Decode every tensor of a packed file: ``(state_dict, header)`` (everything checked)."""
    packed = load_packed(path, max_params=max_params, max_bytes=max_bytes)
    return _decode_all(packed), packed.header


def unpack(path: str | Path, device: str | torch.device = "cpu", *,
           max_params: int | None = None, max_bytes: int | None = None) -> nn.Module:
    """A runnable model (eval mode) from a packed file: the architecture is rebuilt and the
    decoded tensors loaded strictly. Quantized layers keep their spec (re-packing gives the
    same codes).

    ``max_params`` (total tensor entries) and ``max_bytes`` (file size) cap what the file may
    ask for; defaults: :class:`~.packschema.ReadLimits` or the environment variables
    ``SPARSEPRIOR_MAX_PARAMS`` / ``SPARSEPRIOR_MAX_BYTES``.
    """
    packed = load_packed(path, max_params=max_params, max_bytes=max_bytes)
    state = _decode_all(packed)
    model = build_from_architecture(packed.header["architecture"])
    model.load_state_dict(state, strict=True)
    model.eval()
    try:
        if callable(getattr(model, "example_input", None)):
            with torch.no_grad():
                model(model.example_input(1))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"packed file {str(packed.path)!r} is invalid: its architecture does "
                         f"not run ({str(err)[:160]})") from None
    return model.to(device)


def theoretical_bits(numel: int, nnz: int, bits: int, scales: int = 1) -> int:
    """Bits of a sparse ``bits``-bit tensor stored as a 1-bit-per-entry mask, ``nnz`` codes
    and float32 scales: ``numel + nnz * bits + 32 * scales`` (the bitmap baseline)."""
    return numel + nnz * bits + 32 * scales


def fp32_safetensors_size(model: nn.Module, path: str | Path) -> int:
    """Bytes of ``model``'s float32 ``state_dict`` saved with safetensors at ``path``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return os.path.getsize(path)
