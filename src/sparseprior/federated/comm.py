"""The wire format of model updates, and communication counted from its bytes.

One message (a client's upload or the server's download) is a safetensors blob; for each tensor
of the model's ``state_dict``:

* a masked (sparse) layer sends the values at its kept positions only (``fp32`` or ``fp16``),
  plus its mask as a packed bitmap (``ceil(n / 8)`` bytes) or as flat indices (``uint8`` /
  ``uint16`` / ``uint32`` by layer size), whichever is smaller; when the receiver already knows
  the mask (a client sending back the mask it was given) the mask is not sent at all;
* any other tensor (biases, a dense output layer, dense strategies) sends all its values.

Shapes and encodings travel in the safetensors header. Counted bytes are ``len(blob)``: what
actually crosses the network, header included (:func:`message_bytes`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save
from torch import Tensor

from sparseprior.common.validation import check_choice

VALUE_NUMPY = {"fp32": np.float32, "fp16": np.float16}
LAYOUT_KEY = "sparseprior-fed"
META_KEY = "sparseprior-fed-meta"


class DecodeError(ValueError):
    """A message that cannot be decoded (``reason`` names the defect for fault counting)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"bad update ({reason}): {detail}")
        self.reason = reason


def index_dtype(numel: int) -> type:
    """Smallest unsigned integer type that holds flat indices ``0..numel-1``."""
    if numel <= 2**8:
        return np.uint8
    if numel <= 2**16:
        return np.uint16
    return np.uint32


def mask_encoding(mask: Tensor) -> str:
    """``'bitmap'`` or ``'indices'``: whichever encodes ``mask`` in fewer bytes (ties: bitmap)."""
    n, k = mask.numel(), int(mask.sum())
    bitmap = math.ceil(n / 8)
    indices = k * np.dtype(index_dtype(n)).itemsize
    return "indices" if indices < bitmap else "bitmap"


def _values(t: Tensor, value_dtype: str) -> np.ndarray:
    arr = t.detach().to("cpu").contiguous().numpy()
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(VALUE_NUMPY[value_dtype])
    return arr.copy()


def encode_arrays(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None = None,
    *,
    value_dtype: str = "fp32",
    known_masks: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """The arrays and layout of one message (see the module docstring).

    Args:
        weights: name -> tensor (a full ``state_dict``); masked layers must be zero off-mask.
        masks: name -> bool mask of the sparse layers (``None``: everything dense).
        value_dtype: ``'fp32'`` or ``'fp16'`` for floating values.
        known_masks: masks the receiver already has; equal masks are not sent.

    Returns:
        ``(arrays, layout)``: ``arrays`` name -> 1-D numpy array (``<name>`` values,
        ``<name>.mask`` packed bitmap ``uint8`` or indices); ``layout`` name ->
        ``{"shape", "dtype", "enc"}`` with ``enc`` in ``dense``, ``bitmap``, ``indices``,
        ``known``.
    """
    check_choice(value_dtype, "value_dtype", tuple(VALUE_NUMPY))
    masks = masks or {}
    unknown = sorted(set(masks) - set(weights))
    if unknown:
        raise ValueError(f"masks for {unknown} have no weights to go with them")
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, dict] = {}
    for name, w in weights.items():
        entry = {"shape": list(w.shape), "dtype": str(w.dtype).replace("torch.", "")}
        mask = masks.get(name)
        if mask is None:
            arrays[name] = _values(w.reshape(-1), value_dtype)
            entry["enc"] = "dense"
        else:
            flat = mask.detach().to("cpu").reshape(-1).bool()
            arrays[name] = _values(w.detach().to("cpu").reshape(-1)[flat], value_dtype)
            known = known_masks.get(name) if known_masks is not None else None
            if known is not None and torch.equal(known.to("cpu").reshape(-1).bool(), flat):
                entry["enc"] = "known"
            elif mask_encoding(flat) == "bitmap":
                entry["enc"] = "bitmap"
                arrays[f"{name}.mask"] = np.packbits(flat.numpy().astype(np.uint8))
            else:
                entry["enc"] = "indices"
                arrays[f"{name}.mask"] = np.flatnonzero(flat.numpy()).astype(
                    index_dtype(flat.numel()))
        layout[name] = entry
    return arrays, layout


def encode(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None, *,
           value_dtype: str = "fp32", known_masks: Mapping[str, Tensor] | None = None,
           meta: Mapping[str, int | float | str] | None = None) -> bytes:
    """One message as bytes (safetensors); see :func:`encode_arrays` for the arguments.

    ``meta`` (e.g. ``{"num_samples": 600}``) travels in the header as JSON.
    """
    arrays, layout = encode_arrays(weights, masks, value_dtype=value_dtype,
                                   known_masks=known_masks)
    header = {LAYOUT_KEY: json.dumps(layout, separators=(",", ":")),
              META_KEY: json.dumps(dict(meta or {}), separators=(",", ":"))}
    return np_save(arrays, metadata=header)


def message_bytes(blob: bytes) -> int:
    """Bytes that cross the network for ``blob`` (its length; the unit of all accounting)."""
    return len(blob)


def decode_arrays(arrays: Mapping[str, np.ndarray], layout: Mapping[str, dict], *,
                  known_masks: Mapping[str, Tensor] | None = None, max_numel: int = 2**31
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Inverse of :func:`encode_arrays`: ``(weights, masks or None)``.

    Floating values come back as float32; every field is checked before allocating (shapes
    bounded by ``max_numel``, value counts equal mask counts, indices in range), raising
    :class:`DecodeError` otherwise.
    """
    weights: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    for name, entry in layout.items():
        try:
            shape = [int(s) for s in entry["shape"]]
            enc = str(entry["enc"])
        except (KeyError, TypeError, ValueError):
            raise DecodeError("malformed", f"layout of {name!r} is {entry!r}") from None
        numel = math.prod(shape)
        if any(s < 0 for s in shape) or numel > max_numel:
            raise DecodeError("shape", f"{name!r} claims shape {shape}")
        if name not in arrays:
            raise DecodeError("malformed", f"no values for {name!r}")
        values = np.asarray(arrays[name]).reshape(-1)
        if enc == "dense":
            if values.size != numel:
                raise DecodeError("shape", f"{name!r} has {values.size} values for shape "
                                  f"{shape}")
            weights[name] = _tensor(values).reshape(shape)
            continue
        if enc == "known":
            if known_masks is None or name not in known_masks:
                raise DecodeError("unknown_mask", f"{name!r} refers to a mask the receiver "
                                  f"does not have")
            flat = known_masks[name].to("cpu").reshape(-1).bool()
            if flat.numel() != numel:
                raise DecodeError("shape", f"{name!r}: shape {shape} differs from the known "
                                  f"mask's {tuple(known_masks[name].shape)}")
        elif enc == "bitmap":
            bits = np.asarray(arrays.get(f"{name}.mask", np.empty(0, np.uint8)))
            if bits.dtype != np.uint8 or bits.size != math.ceil(numel / 8):
                raise DecodeError("shape", f"{name!r}: bitmap of {bits.size} bytes for "
                                  f"{numel} weights")
            flat = torch.from_numpy(np.unpackbits(bits)[:numel].astype(bool))
        elif enc == "indices":
            idx = np.asarray(arrays.get(f"{name}.mask", np.empty(0, np.uint32))).astype(
                np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= numel or
                             np.any(np.diff(idx) <= 0)):
                raise DecodeError("shape", f"{name!r}: mask indices out of range or unsorted")
            flat = torch.zeros(numel, dtype=torch.bool)
            flat[torch.from_numpy(idx)] = True
        else:
            raise DecodeError("malformed", f"{name!r} has unknown encoding {enc!r}")
        if values.size != int(flat.sum()):
            raise DecodeError("density", f"{name!r}: {values.size} values for a mask with "
                              f"{int(flat.sum())} kept weights")
        full = torch.zeros(numel, dtype=torch.float32)
        full[flat] = _tensor(values).float()
        weights[name] = full.reshape(shape)
        masks[name] = flat.reshape(shape)
    extra = sorted(set(arrays) - set(layout) - {f"{n}.mask" for n in layout})
    if extra:
        raise DecodeError("malformed", f"arrays {extra} are not in the layout")
    return weights, (masks or None)


def _tensor(values: np.ndarray) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(values).copy())
    return t.float() if t.is_floating_point() else t


def decode(blob: bytes, *, known_masks: Mapping[str, Tensor] | None = None,
           max_numel: int = 2**31
           ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, object]]:
    """Inverse of :func:`encode`: ``(weights, masks or None, meta)`` (``DecodeError`` for a
    malformed blob)."""
    layout, meta = _header_of(blob)
    try:
        arrays = np_load(bytes(blob))
    except (SafetensorError, ValueError, OSError) as err:
        raise DecodeError("malformed", f"not a safetensors message ({err})") from None
    weights, masks = decode_arrays(arrays, layout, known_masks=known_masks,
                                   max_numel=max_numel)
    return weights, masks, meta


def _header_of(blob: bytes) -> tuple[dict[str, dict], dict[str, object]]:
    """The layout and meta JSON from a safetensors header (bounded, validated)."""
    if len(blob) < 8:
        raise DecodeError("malformed", "message shorter than a safetensors header")
    size = int.from_bytes(blob[:8], "little")
    if size > len(blob) - 8:
        raise DecodeError("malformed", "header length beyond the message")
    try:
        header = json.loads(blob[8:8 + size])
        layout = json.loads(header["__metadata__"][LAYOUT_KEY])
        meta = json.loads(header["__metadata__"].get(META_KEY, "{}"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DecodeError("malformed", "no sparseprior layout in the header") from None
    if not isinstance(layout, dict) or not isinstance(meta, dict):
        raise DecodeError("malformed", "layout or meta is not an object")
    return layout, meta
