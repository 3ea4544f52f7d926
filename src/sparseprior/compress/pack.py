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

Every part is padded to whole bytes only. Each tensor's bytes carry a CRC32 and the whole file a
SHA-256, so a corrupted or truncated file raises ``ValueError`` instead of loading wrong
weights. The size reported for a model is ``os.path.getsize`` of this file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
from sparseprior.compress.arch import build_from_architecture, describe_architecture
from sparseprior.compress.quantize import (
    QuantSpec,
    dequantize,
    quant_spec_of,
    quantize_tensor,
)

MAGIC = b"SPPK"
VERSION = 1
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


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` ints of ``bits`` bits (int64 array)."""
    need = (count * bits + 7) // 8
    if len(data) != need:
        raise ValueError(f"bit stream has {len(data)} bytes, expected {need} for {count} "
                         f"values of {bits} bits")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits,
                         bitorder="little")
    return (flat.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)


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
    esc = (1 << b) - 1
    gaps = _gaps(np.flatnonzero(mask))
    symbols = []
    for g in gaps.tolist():
        symbols += [esc] * (g // esc) + [g % esc]
    return "delta", b, pack_bits(np.asarray(symbols, dtype=np.int64), b)


def decode_positions(data: bytes, encoding: str, delta_bits: int, numel: int, nnz: int
                     ) -> np.ndarray:
    """Flat bool mask of ``numel`` entries with exactly ``nnz`` ``True``."""
    if encoding == "bitmap":
        if len(data) != (numel + 7) // 8:
            raise ValueError("bitmap length does not match the tensor size")
        mask = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel,
                             bitorder="little").astype(bool)
    elif encoding == "delta":
        count = len(data) * 8 // delta_bits
        symbols = unpack_bits(data[: (count * delta_bits + 7) // 8], delta_bits, count)
        esc = (1 << delta_bits) - 1
        # trailing padding bits decode as extra symbols: keep only the first nnz non-zeros
        step = symbols + (symbols != esc)
        pos = np.cumsum(step) - 1
        index = pos[symbols != esc][:nnz]
        if index.size != nnz or (index.size and index[-1] >= numel):
            raise ValueError("delta-coded positions do not match the tensor size")
        mask = np.zeros(numel, dtype=bool)
        mask[index] = True
    else:
        raise ValueError(f"unknown position encoding {encoding!r}")
    if int(mask.sum()) != nnz:
        raise ValueError(f"positions decode to {int(mask.sum())} non-zeros, expected {nnz}")
    return mask


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


def _part_bytes(record: Mapping[str, Any]) -> int:
    return sum(int(length) for _, length in record["parts"])


def _split_parts(record: Mapping[str, Any], blob: bytes) -> dict[str, bytes]:
    parts, start = {}, 0
    for key, length in record["parts"]:
        parts[key] = blob[start:start + length]
        start += length
    return parts


def _decode_tensor(record: Mapping[str, Any], blob: bytes) -> Tensor:
    shape = tuple(record["shape"])
    numel = int(np.prod(shape)) if shape else 1
    parts = _split_parts(record, blob)
    encoding = record["encoding"]
    if encoding == "raw":
        dtype = getattr(torch, record["dtype"])
        return torch.frombuffer(bytearray(parts["values"]), dtype=dtype).reshape(shape).clone()
    mask = None
    if record.get("positions"):
        mask = decode_positions(parts["positions"], record["positions"],
                                int(record.get("delta_bits", 0)), numel, int(record["nnz"]))
    count = int(record["nnz"]) if mask is not None else numel
    if encoding == "float":
        vals = np.frombuffer(parts["values"], dtype="<f4")
        if vals.size != count:
            raise ValueError(f"tensor {record['name']!r}: {vals.size} values, expected {count}")
        out = np.zeros(numel, dtype=np.float32)
        out[mask if mask is not None else slice(None)] = vals
        return torch.from_numpy(out).reshape(shape)
    if encoding != "codes":
        raise ValueError(f"tensor {record['name']!r} has unknown encoding {encoding!r}")
    spec = QuantSpec.from_dict(record["quant"])
    codes = unpack_bits(parts["codes"], spec.bits, count)
    scale = torch.from_numpy(np.frombuffer(parts["scale"], dtype="<f4").copy())
    zp = _zero_points(spec, parts, scale.numel())
    if mask is not None:  # entries off the support hold the code of 0, i.e. the zero point
        full = np.broadcast_to(zp.numpy().astype(np.int64)[:, None],
                               (zp.numel(), numel // zp.numel())).reshape(-1).copy()
        full[mask] = codes
    else:
        full = codes
    codes_t = torch.from_numpy(full).to(torch.int32).reshape(shape)
    return dequantize(codes_t, scale, zp, spec)


def _zero_points(spec: QuantSpec, parts: Mapping[str, bytes], n: int) -> Tensor:
    """Per-channel zero points (the code of value 0): stored for asymmetric codes, else
    ``2^(bits-1) - 1`` (symmetric uniform) or 0 (pow2)."""
    if "zero_point" in parts:
        return torch.from_numpy(np.frombuffer(parts["zero_point"], dtype=np.uint8)
                                .astype(np.int32))
    if spec.scheme == "uniform":
        return torch.full((n,), 2 ** (spec.bits - 1) - 1, dtype=torch.int32)
    return torch.zeros(n, dtype=torch.int32)


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
         positions: str = "auto") -> PackInfo:
    """Write ``model`` (a registry model ``model_name`` built with ``build``, possibly
    compressed) to a packed file at ``path`` (atomic write).

    Quantized tensors are stored as codes (see the module docstring), other floating tensors
    as float32 (dense or non-zeros only), the rest raw. ``positions`` forces the position code
    (``'bitmap'`` or ``'delta'``) for every sparse tensor; ``'auto'`` picks the smaller.
    """
    if positions not in POSITION_ENCODINGS:
        raise ValueError(f"positions={positions!r} is not one of {POSITION_ENCODINGS}")
    arch = describe_architecture(model, model_name, build or {})
    targets = quant_targets(model)
    records, chunks, offset = [], [], 0
    for name, t in model.state_dict().items():
        if name in targets:
            spec, scale = targets[name]
            record, parts = _encode_codes(t, spec, scale, positions)
        elif t.dtype == torch.float32:
            record, parts = _encode_float(t, positions)
        else:
            record, parts = _encode_raw(t)
        blob = b"".join(parts)
        record.update(name=name, shape=list(t.shape), dtype=str(t.dtype).replace("torch.", ""),
                      offset=offset, crc32=zlib.crc32(blob))
        records.append(record)
        chunks.append(blob)
        offset += len(blob)
    header = {"format": FORMAT, "version": VERSION, "architecture": arch,
              "payload_bytes": offset, "meta": dict(meta or {}), "tensors": records}
    head = zlib.compress(json.dumps(header, separators=(",", ":"), sort_keys=True)
                         .encode("utf-8"), 9)
    body = _PREFIX.pack(MAGIC, VERSION, FLAG_ZLIB_HEADER, len(head)) + head + b"".join(chunks)
    data = body + hashlib.sha256(body).digest()
    path = atomic_write_bytes(path, data)
    return PackInfo(path, os.path.getsize(path), len(head),
                    {r["name"]: _part_bytes(r) for r in records})


def read_header(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """Check a packed file (size, magic, version, SHA-256) and return ``(header, payload)``.

    Raises ``ValueError`` naming the problem for a truncated, corrupted or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"packed file {str(path)!r} not found")
    data = path.read_bytes()
    where = f"packed file {str(path)!r}"
    if len(data) < _PREFIX.size + _DIGEST:
        raise ValueError(f"{where} is truncated: {len(data)} bytes is shorter than the "
                         f"{_PREFIX.size + _DIGEST}-byte minimum")
    magic, version, flags, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"{where} is not a sparseprior packed file (magic {magic!r}, "
                         f"expected {MAGIC!r})")
    if version != VERSION:
        raise ValueError(f"{where} has format version {version}; this reader supports "
                         f"{VERSION}")
    if _PREFIX.size + head_len + _DIGEST > len(data):
        raise ValueError(f"{where} is truncated: its header claims {head_len} bytes but the "
                         f"file has {len(data)} bytes")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    try:
        head = data[_PREFIX.size:_PREFIX.size + head_len]
        if flags & FLAG_ZLIB_HEADER:
            head = zlib.decompress(head)
        header = json.loads(head.decode("utf-8"))
        payload_len = int(header["payload_bytes"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
            zlib.error) as err:
        raise ValueError(f"{where} is corrupted: its header cannot be read ({err})") from err
    expected = _PREFIX.size + head_len + payload_len + _DIGEST
    if len(data) != expected:
        raise ValueError(f"{where} is truncated or has trailing bytes: {len(data)} bytes, the "
                         f"header says {expected}")
    if hashlib.sha256(body).digest() != digest:
        raise ValueError(f"{where} is corrupted: SHA-256 checksum mismatch")
    return header, data[_PREFIX.size + head_len:-_DIGEST]


def unpack_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Decode every tensor of a packed file: ``(state_dict, header)`` (checksums verified)."""
    header, payload = read_header(path)
    state = {}
    for record in header["tensors"]:
        start = int(record["offset"])
        blob = payload[start:start + _part_bytes(record)]
        if zlib.crc32(blob) != record["crc32"]:
            raise ValueError(f"packed file {str(path)!r} is corrupted: CRC32 mismatch in "
                             f"tensor {record['name']!r}")
        t = _decode_tensor(record, blob)
        state[record["name"]] = t.reshape(tuple(record["shape"]))
    return state, header


def unpack(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A runnable model (eval mode) from a packed file: the architecture is rebuilt and the
    decoded tensors loaded strictly. Quantized layers keep their spec (re-packing gives the
    same codes)."""
    state, header = unpack_state(path)
    model = build_from_architecture(header["architecture"])
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


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
