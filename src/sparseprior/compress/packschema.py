"""The strict reader side of the packed format: limits, a typed header schema, cross-checks.

A packed file's checksums catch accidents, not attacks (anyone can recompute them), so the
reader trusts nothing in a header until it has been checked:

* **Limits** (:class:`ReadLimits`): the file size, the inflated header size, the number of
  modules an architecture may create and the total number of tensor entries are capped
  *before* anything of that size is allocated. Defaults fit every registry model with a wide
  margin; raise them with ``max_params=`` / ``max_bytes=`` or the environment variables
  ``SPARSEPRIOR_MAX_PARAMS`` / ``SPARSEPRIOR_MAX_BYTES``.
* **Types and ranges** (:func:`parse_record`): every field of every tensor record has one
  type and range, unknown fields are errors, the dtype comes from an allow-list.
* **Consistency** (:func:`check_architecture`): the architecture is first built on PyTorch's
  ``meta`` device (no memory) under a module-count cap; its ``state_dict`` names, shapes and
  dtypes must equal the records, the tensors stored as codes must be exactly the model's
  quantized tensors with the same spec, and every layer must keep the registry model's layer
  type family, geometry (kernel, stride, padding, dilation) and BatchNorm constants, with sizes
  no larger than the registry model's (compression only shrinks).

Every failure is a ``ValueError`` naming the file, the tensor or field, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sparseprior.compress.quantize import QuantSpec

ENV_MAX_PARAMS = "SPARSEPRIOR_MAX_PARAMS"
ENV_MAX_BYTES = "SPARSEPRIOR_MAX_BYTES"
#: Default cap on the total number of tensor entries a file may declare (2^27 = 134M, 4.3x
#: VGG-16's; 512 MiB as float32).
DEFAULT_MAX_PARAMS = 2**27
DEFAULT_MAX_HEADER_BYTES = 16 * 2**20
DEFAULT_MAX_MODULES = 20_000
MAX_TENSORS = 100_000
MAX_DIMS = 8
MAX_DIM_SIZE = 2**31

#: dtype names a raw tensor may have -> (torch dtype, bytes per entry). Nothing else is read.
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "float32": (torch.float32, 4), "float64": (torch.float64, 8),
    "float16": (torch.float16, 2), "bfloat16": (torch.bfloat16, 2),
    "int64": (torch.int64, 8), "int32": (torch.int32, 4), "int16": (torch.int16, 2),
    "int8": (torch.int8, 1), "uint8": (torch.uint8, 1), "bool": (torch.bool, 1),
}
ENCODINGS = ("codes", "float", "raw")
POSITION_KINDS = ("bitmap", "delta")
MAX_DELTA_BITS = 16


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive integer"
                         ) from None


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """Caps a reader applies before allocating anything a file asks for.

    Attributes:
        max_params: total tensor entries (sum of ``numel``) a file may declare.
        max_bytes: largest file accepted (default ``4 * max_params + 64 MiB``).
        max_header_bytes: largest inflated JSON header.
        max_modules: modules an architecture may register while it is built.
    """

    max_params: int = DEFAULT_MAX_PARAMS
    max_bytes: int | None = None
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_modules: int = DEFAULT_MAX_MODULES

    def __post_init__(self) -> None:
        for field in ("max_params", "max_header_bytes", "max_modules"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.max_bytes is not None and (isinstance(self.max_bytes, bool) or
                                           not isinstance(self.max_bytes, int) or
                                           self.max_bytes < 1):
            raise ValueError(f"max_bytes must be a positive integer or None, got "
                             f"{self.max_bytes!r}")

    @property
    def file_bytes(self) -> int:
        """The effective file-size cap in bytes."""
        if self.max_bytes is not None:
            return self.max_bytes
        return 4 * self.max_params + 64 * 2**20

    @classmethod
    def resolve(cls, max_params: int | None = None, max_bytes: int | None = None
                ) -> ReadLimits:
        """Limits from the arguments, else the environment variables, else the defaults."""
        if max_params is None:
            max_params = _env_int(ENV_MAX_PARAMS) or DEFAULT_MAX_PARAMS
        if max_bytes is None:
            max_bytes = _env_int(ENV_MAX_BYTES)
        return cls(max_params=max_params, max_bytes=max_bytes)


# --------------------------------------------------------------------------- bounded inflate


def inflate_bounded(data: bytes, limit: int, what: str) -> bytes:
    """zlib-decompress ``data`` to at most ``limit`` bytes; ``ValueError`` for more, for a
    corrupt stream, or for bytes after its end."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit)
        if inflater.unconsumed_tail:
            raise ValueError(f"{what} inflates to more than {limit} bytes; refusing it")
        out += inflater.flush()
    except zlib.error as err:
        raise ValueError(f"{what} is not a valid zlib stream ({err})") from None
    if len(out) > limit:
        raise ValueError(f"{what} inflates to more than {limit} bytes; refusing it")
    if not inflater.eof or inflater.unused_data:
        raise ValueError(f"{what} is a truncated zlib stream or has trailing bytes")
    return out


# --------------------------------------------------------------------------- field checks


def check_int(value: Any, field: str, lo: int, hi: int, where: str) -> int:
    """``value`` if it is an ``int`` (not ``bool``) in ``[lo, hi]``, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{where}: field {field!r} must be an integer in [{lo}, {hi}], got "
                         f"{_short(value)}")
    return value


def check_str(value: Any, field: str, where: str, choices: tuple[str, ...] | None = None,
              max_len: int = 512) -> str:
    """``value`` if it is a non-empty ``str`` (one of ``choices`` when given)."""
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ValueError(f"{where}: field {field!r} must be a non-empty string of at most "
                         f"{max_len} characters, got {_short(value)}")
    if choices is not None and value not in choices:
        raise ValueError(f"{where}: field {field!r} must be one of {list(choices)}, got "
                         f"{_short(value)}")
    return value


def check_keys(obj: Any, required: set[str], where: str, optional: frozenset[str] = frozenset()
               ) -> Mapping[str, Any]:
    """``obj`` if it is a dict with every ``required`` key and nothing outside
    ``required | optional``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(obj).__name__}")
    missing = sorted(required - set(obj))
    unknown = sorted(set(obj) - required - optional, key=str)
    if missing or unknown:
        raise ValueError(f"{where}: missing field(s) {missing}, unknown field(s) "
                         f"{_short(unknown)}; expected {sorted(required | optional)}")
    return obj


# --------------------------------------------------------------------------- tensor records


@dataclasses.dataclass(frozen=True)
class TensorRecord:
    """One checked tensor record of a header (see :mod:`sparseprior.compress.pack`).

    ``parts`` are ``(name, stored bytes, coder)``; ``coder`` is ``"none"`` in version 1.
    ``code_width`` is the bits per stored code (``quant.bits``, or 8 in version 2 when the
    codes are byte-aligned for an entropy coder); ``scale_dtype`` is ``float32`` or (version 2,
    when exact) ``float16``; ``value_dtype`` (``float`` records, version 2) likewise for the
    stored values (``float16`` only when every value is one).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    offset: int
    parts: tuple[tuple[str, int, str], ...]
    crc32: int
    nnz: int | None = None
    positions: str | None = None
    delta_bits: int = 0
    quant: QuantSpec | None = None
    scale_len: int | None = None
    scale_dtype: str = "float32"
    code_width: int = 0
    value_dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stored_bytes(self) -> int:
        return sum(length for _, length, _ in self.parts)

    @property
    def count(self) -> int:
        """Values stored: ``nnz`` when positions are stored, else ``numel``."""
        return self.nnz if self.positions else self.numel  # type: ignore[return-value]

    @property
    def where(self) -> str:
        return f"tensor {self.name!r}"


def expected_scale_len(shape: tuple[int, ...], spec: QuantSpec) -> int:
    """Scales a quantized tensor of ``shape`` has: dim 0 per channel (2-D and up), else 1."""
    return shape[0] if spec.granularity == "channel" and len(shape) >= 2 else 1


def expected_part_names(rec: TensorRecord) -> list[str]:
    """Part names, in order, that a record of this encoding must have."""
    names = ["positions"] if rec.positions else []
    if rec.encoding == "codes":
        assert rec.quant is not None
        names += ["codes", "scale"]
        if rec.quant.scheme == "uniform" and not rec.quant.symmetric:
            names.append("zero_point")
        return names
    return names + ["values"]


_COMMON = {"name", "shape", "dtype", "encoding", "offset", "parts", "crc32"}
_EXTRA = {"codes": {"quant", "nnz", "scale_len", "positions"},
          "float": {"nnz", "positions"}, "raw": set()}


_V2_EXTRA = {"codes": {"code_width", "scale_dtype", "coders"}, "float": {"coders"},
             "raw": {"coders"}}


def parse_record(raw: Any, index: int, version: int = 1, coders: tuple[str, ...] = ("none",)
                 ) -> TensorRecord:
    """Check one header tensor record (types, ranges, fields allowed for its encoding and
    format ``version``) and return it typed. ``coders`` are the part coders allowed."""
    where = f"tensor record #{index}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(raw).__name__}")
    name = check_str(raw.get("name"), "name", where)
    where = f"tensor {name!r}"
    encoding = check_str(raw.get("encoding"), "encoding", where, ENCODINGS)
    extra = set(_EXTRA[encoding]) | (_V2_EXTRA[encoding] if version >= 2 else set())
    optional = frozenset({"delta_bits"}) if "positions" in extra else frozenset()
    if encoding == "float" and version >= 2:
        optional |= {"value_dtype"}
    check_keys(raw, _COMMON | extra, where, optional)
    shape_raw = raw["shape"]
    if not isinstance(shape_raw, list) or len(shape_raw) > MAX_DIMS:
        raise ValueError(f"{where}: field 'shape' must be a list of at most {MAX_DIMS} "
                         f"sizes, got {_short(shape_raw)}")
    shape = tuple(check_int(s, "shape", 0, MAX_DIM_SIZE, where) for s in shape_raw)
    dtype = check_str(raw["dtype"], "dtype", where, tuple(DTYPES))
    if (encoding == "raw") == (dtype == "float32"):
        raise ValueError(f"{where}: encoding {encoding!r} cannot hold dtype {dtype!r} "
                         f"(float32 tensors are 'codes' or 'float', others 'raw')")
    offset = check_int(raw["offset"], "offset", 0, 2**62, where)
    crc = check_int(raw["crc32"], "crc32", 0, 2**32 - 1, where)
    fields: dict[str, Any] = {}
    numel = math.prod(shape)
    if encoding != "raw":
        fields["nnz"] = check_int(raw["nnz"], "nnz", 0, numel, where)
        positions = raw["positions"]
        if positions is not None:
            check_str(positions, "positions", where, POSITION_KINDS)
            lo, hi = (0, 0) if positions == "bitmap" else (1, MAX_DELTA_BITS)
            fields["delta_bits"] = check_int(raw.get("delta_bits"), "delta_bits", lo, hi, where)
        elif "delta_bits" in raw:
            raise ValueError(f"{where}: field 'delta_bits' is only allowed with positions")
        fields["positions"] = positions
    if encoding == "codes":
        if len(shape) == 0:
            raise ValueError(f"{where}: a tensor stored as codes needs at least 1 dimension")
        names = frozenset(f.name for f in dataclasses.fields(QuantSpec))
        try:
            spec = QuantSpec.from_dict(check_keys(raw["quant"], set(), f"{where}: 'quant'",
                                                  names))
        except TypeError as err:
            raise ValueError(f"{where}: field 'quant' is not a valid QuantSpec ({err})") from None
        fields["quant"] = spec
        expect = expected_scale_len(shape, spec)
        fields["scale_len"] = check_int(raw["scale_len"], "scale_len", expect, expect, where)
        fields["code_width"] = spec.bits
        if version >= 2:
            width = check_int(raw["code_width"], "code_width", spec.bits, 8, where)
            if width not in (spec.bits, 8):
                raise ValueError(f"{where}: field 'code_width' must be {spec.bits} or 8, got "
                                 f"{width}")
            fields["code_width"] = width
            fields["scale_dtype"] = check_str(raw["scale_dtype"], "scale_dtype", where,
                                              ("float32", "float16"))
    if "value_dtype" in raw:
        fields["value_dtype"] = check_str(raw["value_dtype"], "value_dtype", where,
                                          ("float32", "float16"))
    parts = _parse_parts(raw["parts"], raw.get("coders") if version >= 2 else None, where,
                         coders)
    return TensorRecord(name=name, shape=shape, dtype=dtype, encoding=encoding, offset=offset,
                        parts=parts, crc32=crc, **fields)


def _parse_parts(raw: Any, coder_names: Any, where: str, coders: tuple[str, ...]
                 ) -> tuple[tuple[str, int, str], ...]:
    """``parts`` (``[[name, bytes], ...]``) and, from version 2, ``coders`` (one name per
    part) as ``(name, bytes, coder)``."""
    if not isinstance(raw, list) or len(raw) > 8:
        raise ValueError(f"{where}: field 'parts' must be a list of at most 8 parts, got "
                         f"{_short(raw)}")
    if coder_names is None:
        coder_names = ["none"] * len(raw)
    elif not isinstance(coder_names, list) or len(coder_names) != len(raw):
        raise ValueError(f"{where}: field 'coders' must list one coder per part, got "
                         f"{_short(coder_names)}")
    parts = []
    for item, coder in zip(raw, coder_names, strict=True):
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError(f"{where}: each part must be a list [name, bytes], got "
                             f"{_short(item)}")
        part = check_str(item[0], "parts[].name", where, max_len=32)
        length = check_int(item[1], f"parts[{part}].bytes", 0, 2**62, where)
        parts.append((part, length, check_str(coder, f"coders[{part}]", where, coders)))
    return tuple(parts)


def check_part_layout(rec: TensorRecord) -> None:
    """Part names must be exactly the encoding's, in order."""
    names = [p[0] for p in rec.parts]
    expected = expected_part_names(rec)
    if names != expected:
        raise ValueError(f"{rec.where}: parts {_short(names)} do not match the encoding "
                         f"{rec.encoding!r} (expected {expected})")


def raw_part_sizes(rec: TensorRecord) -> dict[str, tuple[int, int]]:
    """``part -> (min, max)`` decoded byte length each part of ``rec`` may have (exact
    except delta-coded positions, whose length depends on the gaps)."""
    count = rec.count
    sizes: dict[str, tuple[int, int]] = {}
    if rec.positions == "bitmap":
        n = (rec.numel + 7) // 8
        sizes["positions"] = (n, n)
    elif rec.positions == "delta":
        b = rec.delta_bits
        assert rec.nnz is not None
        most = rec.nnz + (rec.numel - rec.nnz) // ((1 << b) - 1)
        sizes["positions"] = ((rec.nnz * b + 7) // 8, (most * b + 7) // 8)
    if rec.encoding == "codes":
        assert rec.quant is not None and rec.scale_len is not None
        n = (count * rec.code_width + 7) // 8
        sizes["codes"] = (n, n)
        width = 2 if rec.scale_dtype == "float16" else 4
        sizes["scale"] = (width * rec.scale_len, width * rec.scale_len)
        if rec.quant.scheme == "uniform" and not rec.quant.symmetric:
            sizes["zero_point"] = (rec.scale_len, rec.scale_len)
    elif rec.encoding == "float":
        width = 2 if rec.value_dtype == "float16" else 4
        sizes["values"] = (width * count, width * count)
    else:
        n = rec.numel * DTYPES[rec.dtype][1]
        sizes["values"] = (n, n)
    return sizes


def check_offsets(records: list[TensorRecord], payload_bytes: int) -> None:
    """Records must be back to back from offset 0 and fill the payload exactly."""
    offset = 0
    for rec in records:
        if rec.offset != offset:
            raise ValueError(f"{rec.where}: field 'offset' is {rec.offset}, expected {offset} "
                             f"(tensors are stored back to back)")
        offset += rec.stored_bytes
    if offset != payload_bytes:
        raise ValueError(f"the tensors' parts add up to {offset} bytes but the payload has "
                         f"{payload_bytes}")


# --------------------------------------------------------------------------- architecture


class _SkipRandomInit(TorchFunctionMode):
    """Skip random in-place initialisers (on the meta device they only cost time: PyTorch
    routes ``normal_`` on meta through its reference implementation)."""

    _SKIP = frozenset({"normal_", "uniform_", "trunc_normal_", "log_normal_", "exponential_",
                       "cauchy_", "geometric_", "bernoulli_", "random_"})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        if getattr(func, "__name__", "") in self._SKIP and args:
            return args[0]
        return func(*args, **(kwargs or {}))


@contextmanager
def _module_budget(limit: int) -> Iterator[None]:
    """Raise ``ValueError`` once more than ``limit`` submodules are registered inside."""
    count = 0

    def hook(module: nn.Module, name: str, submodule: nn.Module) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise ValueError(f"the architecture creates more than {limit} modules")

    handle = nn.modules.module.register_module_module_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


_BUILD_ERRORS = (TypeError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError,
                 ZeroDivisionError, RecursionError, AssertionError, NotImplementedError)


def meta_build(fn: Any, what: str, limits: ReadLimits) -> nn.Module:
    """Run ``fn()`` (which builds a model) on the meta device, with random init skipped and
    the module budget enforced; any failure becomes a ``ValueError`` about ``what``."""
    try:
        with torch.device("meta"), _SkipRandomInit(), _module_budget(limits.max_modules):
            return fn()
    except ValueError as err:
        raise ValueError(f"{what} is invalid: {err}") from None
    except _BUILD_ERRORS as err:
        raise ValueError(f"{what} cannot be built: {type(err).__name__}: "
                         f"{_short(str(err), 200)}") from None


_GEOMETRY = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode",
             "eps", "momentum", "affine", "track_running_stats")


def _families() -> list[tuple[type, tuple[type, ...]]]:
    from sparseprior.compress.layers import LAYER_TYPES
    from sparseprior.compress.lowrank import LowRankConv2d, LowRankLinear
    from sparseprior.compress.smartexchange import SmartExchangeConv2d, SmartExchangeLinear

    # layer types registered by extensions may stand in for Linear/Conv layers (their sizes
    # and geometry are still checked); BatchNorm layers must stay BatchNorm
    known = {nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, LowRankLinear,
             LowRankConv2d, SmartExchangeLinear, SmartExchangeConv2d}
    extensions = tuple(entry.cls for _, entry in LAYER_TYPES.items() if entry.cls not in known)
    return [(nn.Linear, (nn.Linear, LowRankLinear, SmartExchangeLinear, *extensions)),
            (nn.Conv2d, (nn.Conv2d, LowRankConv2d, SmartExchangeConv2d, *extensions)),
            (nn.BatchNorm2d, (nn.BatchNorm2d,)), (nn.BatchNorm1d, (nn.BatchNorm1d,))]


def _sizes(m: nn.Module) -> dict[str, int]:
    keys = ("in_features", "out_features", "in_channels", "out_channels", "num_features")
    return {k: getattr(m, k) for k in keys if isinstance(getattr(m, k, None), int)}


def _geometry_of(m: nn.Module) -> dict[str, Any]:
    inner = m.first if hasattr(m, "first") and isinstance(m.first, nn.Conv2d) else m
    return {k: getattr(inner, k) for k in _GEOMETRY if hasattr(inner, k)}


def check_layers_against_base(model: nn.Module, base: nn.Module) -> None:
    """Every layer of ``model`` that replaces one of the registry model ``base`` keeps its
    family (linear / conv / BatchNorm), geometry and constants, with sizes no larger."""
    base_modules = dict(base.named_modules())
    families = _families()
    for name, module in model.named_modules():
        ref = base_modules.get(name)
        if ref is None or not name:
            continue
        for family, allowed in families:
            if isinstance(ref, family):
                if not isinstance(module, allowed):
                    raise ValueError(f"layer {name!r} is a {type(module).__name__}, but the "
                                     f"registry model has a {type(ref).__name__} there")
                break
        else:
            continue
        want, got = _geometry_of(ref), _geometry_of(module)
        for key in sorted(set(want) & set(got)):
            if want[key] != got[key]:
                raise ValueError(f"layer {name!r}: {key}={_short(got[key])} differs from the "
                                 f"registry model's {want[key]!r}")
        base_sizes = _sizes(ref)
        for key, value in _sizes(module).items():
            if key in base_sizes and not 1 <= value <= base_sizes[key]:
                raise ValueError(f"layer {name!r}: {key}={value} must lie in [1, "
                                 f"{base_sizes[key]}] (the registry model's size)")


def check_architecture_fields(arch: Any, arch_version: int) -> None:
    """Types of the architecture's top-level fields (before anything is built)."""
    from sparseprior.models import MODELS, model_options

    where = "architecture"
    check_keys(arch, {"version", "model", "build", "layers"}, where)
    check_int(arch["version"], "architecture.version", arch_version, arch_version, where)
    model = check_str(arch["model"], "architecture.model", where, tuple(MODELS))
    allowed = set(model_options(model)) | {"in_channels", "num_classes", "input_size"}
    check_keys(arch["build"], set(), f"{where}: 'build'", frozenset(allowed))
    layers = arch["layers"]
    if not isinstance(layers, dict):
        raise ValueError(f"{where}: field 'layers' must be a JSON object")
    for name, spec in layers.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise ValueError(f"{where}: layer {_short(name)} must be an object with a 'type'")


def check_size(model: nn.Module, what: str, limits: ReadLimits) -> None:
    """``ValueError`` when the (meta) model holds more than ``limits.max_params`` entries."""
    total = sum(t.numel() for t in model.state_dict().values())
    if total > limits.max_params:
        raise ValueError(f"{what} has {total:,} tensor entries, more than the reader's limit "
                         f"max_params={limits.max_params:,} (raise it with max_params= or "
                         f"{ENV_MAX_PARAMS} if you trust this file)")


def check_state_matches(model: nn.Module, records: list[TensorRecord], limits: ReadLimits
                        ) -> None:
    """Record names/shapes/dtypes must equal the (meta) model's ``state_dict``, in order, and
    the total size stay under ``limits.max_params``."""
    check_size(model, "the architecture", limits)
    state = model.state_dict()
    names = [r.name for r in records]
    if names != list(state):
        missing = [n for n in state if n not in set(names)]
        extra = [n for n in names if n not in state]
        raise ValueError(f"the tensors do not match the architecture's state_dict: missing "
                         f"{_short(missing)}, unexpected {_short(extra)} (or out of order)")
    for rec in records:
        t = state[rec.name]
        if tuple(t.shape) != rec.shape:
            raise ValueError(f"{rec.where}: shape {list(rec.shape)} does not match the "
                             f"architecture's {list(t.shape)}")
        if DTYPES[rec.dtype][0] != t.dtype:
            raise ValueError(f"{rec.where}: dtype {rec.dtype!r} does not match the "
                             f"architecture's {str(t.dtype).replace('torch.', '')}")


def check_codes_match(targets: Mapping[str, tuple[QuantSpec, Any]],
                      records: list[TensorRecord]) -> None:
    """Tensors stored as codes must be exactly the model's quantized tensors, same spec."""
    for rec in records:
        if rec.name in targets:
            spec = targets[rec.name][0]
            if rec.encoding != "codes" or rec.quant != spec:
                raise ValueError(f"{rec.where}: the architecture quantizes it with {spec}, "
                                 f"but it is stored as {rec.encoding!r} with {rec.quant}")
        elif rec.encoding == "codes":
            raise ValueError(f"{rec.where}: stored as codes but its layer is not quantized")
