"""Weight quantization: k-bit uniform and power-of-two codes, PTQ, QAT with a straight-through
estimator, and the real int8 CPU backend (PyTorch dynamic int8 ``Linear``).

Codes (what :mod:`sparseprior.compress.pack` stores, ``k`` bits each):

* ``uniform``, symmetric: ``q = clamp(round(w / s), -(2^(k-1)-1), 2^(k-1)-1)``, value ``q * s``,
  ``s = max|w| / (2^(k-1)-1)``; stored code ``q + 2^(k-1) - 1`` (so zero is code ``2^(k-1)-1``).
* ``uniform``, asymmetric: ``q = clamp(round(w / s) + z, 0, 2^k-1)``, value ``(q - z) * s``,
  ``s = (max - min) / (2^k - 1)`` over a range that always contains 0, ``z`` an integer zero
  point (so ``w = 0`` is exactly representable and pruned weights stay exactly zero).
* ``pow2``: value ``sign * s * 2^(m - M)`` for ``m = 1..M``, ``M = 2^(k-1) - 1``, or zero for
  ``m = 0``; code ``sign_bit << (k-1) | m``; ``s = max|w|`` (so exponents span ``[1-M, 0]``).
  Rounding is done in the log domain; magnitudes below ``s * 2^(1-M) / sqrt(2)`` become zero.

``granularity='channel'`` uses one scale per output channel (dim 0); ``'tensor'`` one scale.
All scales are float32 (float16 values with ``scale_dtype='float16'``) and quantization maps
``0`` to ``0`` exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseprior.common.config import Config
from sparseprior.common.validation import check_choice
from sparseprior.compress.steps import StepState, register_step

SCHEMES = ("uniform", "pow2")
GRANULARITIES = ("tensor", "channel")
SCALE_DTYPES = ("float32", "float16")


@dataclasses.dataclass
class QuantSpec(Config):
    """How one weight tensor is quantized.

    Attributes:
        bits: code width ``k`` (2..8).
        scheme: ``'uniform'`` or ``'pow2'`` (signed powers of two, a zero code).
        granularity: ``'tensor'`` (one scale) or ``'channel'`` (one per output channel).
        symmetric: symmetric range around 0 (``uniform`` only; ``pow2`` is always symmetric).
        scale_dtype: ``'float32'`` or ``'float16'``: scales rounded to the nearest float16
            (codes computed with the rounded scale, so the packed file stores them exactly in
            2 bytes; a scale float16 cannot hold, overflowing or rounding to 0, stays float32).
        bias_dtype: ``'float32'`` or ``'float16'``: the layer's bias rounded to float16 in
            the forward pass (straight-through) and when frozen, so the packed file stores
            it in 2 bytes per value (values beyond float16's range stay float32).
    """

    bits: int = 8
    scheme: str = "uniform"
    granularity: str = "channel"
    symmetric: bool = True
    scale_dtype: str = "float32"
    bias_dtype: str = "float32"

    def validate(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or \
                not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer in [2, 8], got {self.bits!r}")
        check_choice(self.scheme, "scheme", SCHEMES)
        check_choice(self.granularity, "granularity", GRANULARITIES)
        check_choice(self.scale_dtype, "scale_dtype", SCALE_DTYPES)
        check_choice(self.bias_dtype, "bias_dtype", SCALE_DTYPES)
        if self.scheme == "pow2" and not self.symmetric:
            raise ValueError("scheme='pow2' is always symmetric; set symmetric=True")

    @property
    def max_exponent_steps(self) -> int:
        """``M = 2^(k-1) - 1``: the number of nonzero magnitudes of ``pow2``."""
        return 2 ** (self.bits - 1) - 1


@dataclasses.dataclass
class QuantizedTensor:
    """Codes and scales of one tensor.

    Attributes:
        codes: int32 tensor of the weight's shape, values in ``[0, 2^bits)``.
        scale: float32, shape ``(C,)`` for per-channel (``C`` = dim 0) or ``(1,)``.
        zero_point: int32, same shape as ``scale`` (0 except asymmetric uniform).
        spec: the :class:`QuantSpec` used.
    """

    codes: Tensor
    scale: Tensor
    zero_point: Tensor
    spec: QuantSpec

    def dequantize(self) -> Tensor:
        """Float32 values of the codes (the weight's shape)."""
        return dequantize(self.codes, self.scale, self.zero_point, self.spec)


def _per_channel(t: Tensor, spec: QuantSpec) -> Tensor:
    """``t`` as ``(C, n)`` (per channel) or ``(1, N)`` (per tensor)."""
    if spec.granularity == "channel" and t.dim() >= 2:
        return t.reshape(t.shape[0], -1)
    return t.reshape(1, -1)


def _broadcast(v: Tensor, shape: torch.Size) -> Tensor:
    """A ``(C,)`` or ``(1,)`` vector shaped to broadcast over a tensor of ``shape``."""
    if v.numel() == 1:
        return v.reshape([1] * len(shape)) if len(shape) else v.reshape(())
    return v.reshape(-1, *([1] * (len(shape) - 1)))


def _stored_scale(scale: Tensor, spec: QuantSpec) -> Tensor:
    """``scale`` as the file stores it: rounded to float16 where ``spec`` asks and float16
    holds it (finite and above zero; subnormal float16s, below 6.1e-5, keep fewer significant
    bits), else unchanged float32."""
    if spec.scale_dtype != "float16":
        return scale
    half = scale.half().float()
    return torch.where(torch.isfinite(half) & (half > 0), half, scale)


@torch.no_grad()
def quantize_tensor(w: Tensor, spec: QuantSpec, scale: Tensor | None = None) -> QuantizedTensor:
    """Quantize ``w`` (any shape, float) to ``spec.bits``-bit codes; see the module docstring.

    ``scale`` fixes the ``pow2`` scale (``(1,)`` or ``(C,)``) instead of ``max|w|``, so the
    exponent range is absolute (SmartExchange's ``Ce`` uses ``scale = 1``).
    """
    if not isinstance(w, Tensor) or not w.dtype.is_floating_point:
        raise TypeError(f"w must be a floating torch.Tensor, got {type(w).__name__}")
    w = w.detach().float().cpu()
    rows = _per_channel(w, spec)
    if scale is not None and spec.scheme != "pow2":
        raise ValueError("a fixed scale is only supported for scheme='pow2'")
    if spec.scheme == "pow2":
        if scale is None:
            scale = rows.abs().amax(dim=1)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        scale = _stored_scale(scale.detach().float().cpu().reshape(-1), spec)
        zp = torch.zeros_like(scale, dtype=torch.int32)
        m_max = spec.max_exponent_steps
        s = _broadcast(scale, w.shape)
        mag = (w.abs() / s).clamp_min(1e-30)
        m = torch.round(torch.log2(mag)) + m_max  # exponent index, m_max <-> 2^0
        m = m.clamp(1, m_max)
        m = torch.where(mag < 2.0 ** (1 - m_max) / math.sqrt(2.0), torch.zeros_like(m), m)
        sign = (w < 0) & (m > 0)
        codes = (sign.to(torch.int32) << (spec.bits - 1)) | m.to(torch.int32)
        return QuantizedTensor(codes, scale.float(), zp, spec)
    if spec.symmetric:
        qmax = 2 ** (spec.bits - 1) - 1
        scale = rows.abs().amax(dim=1) / qmax
        scale = _stored_scale(torch.where(scale > 0, scale, torch.ones_like(scale)).float(), spec)
        q = torch.round(w / _broadcast(scale, w.shape)).clamp(-qmax, qmax)
        codes = (q + qmax).to(torch.int32)
        zp = torch.full_like(scale, qmax, dtype=torch.int32)
        return QuantizedTensor(codes, scale, zp, spec)
    levels = 2 ** spec.bits - 1
    lo = rows.amin(dim=1).clamp_max(0.0)
    hi = rows.amax(dim=1).clamp_min(0.0)
    scale = (hi - lo) / levels
    scale = _stored_scale(torch.where(scale > 0, scale, torch.ones_like(scale)).float(), spec)
    zp = torch.round(-lo / scale).clamp(0, levels).to(torch.int32)
    q = torch.round(w / _broadcast(scale, w.shape)) + _broadcast(zp, w.shape)
    codes = q.clamp(0, levels).to(torch.int32)
    return QuantizedTensor(codes, scale, zp, spec)


@torch.no_grad()
def snap_to_grid(w: Tensor, spec: QuantSpec, scale: Tensor | None = None,
                 max_iter: int = 8) -> QuantizedTensor:
    """Quantize ``w`` so that quantizing the result again reproduces it bit for bit.

    Re-quantizing dequantized values gives the same codes, but a scale recomputed from them
    (min/max) can differ in the last bit; iterating ``w <- dequantize(quantize(w))`` reaches a
    fixed point in one or two steps. Returns the codes of that fixed point.
    """
    q = quantize_tensor(w, spec, scale)
    for _ in range(max_iter):
        values = q.dequantize()
        again = quantize_tensor(values, spec, scale)
        if torch.equal(again.dequantize(), values):
            return again
        q = again
    raise ValueError(f"quantization with {spec} did not reach a fixed point")


def dequantize(codes: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    """Float32 values of ``codes`` (int, any shape) with ``scale``/``zero_point`` ``(C,)|(1,)``."""
    codes = codes.to(torch.int32)
    s = _broadcast(scale.float(), codes.shape)
    if spec.scheme == "pow2":
        m = codes & ((1 << (spec.bits - 1)) - 1)
        sign = 1.0 - 2.0 * ((codes >> (spec.bits - 1)) & 1).float()
        mag = torch.exp2((m - spec.max_exponent_steps).float()) * s
        return torch.where(m > 0, sign * mag, torch.zeros_like(mag))
    z = _broadcast(zero_point.to(torch.int32), codes.shape)
    return (codes - z).float() * s


def stored_bias(b: Tensor | None, spec: QuantSpec) -> Tensor | None:
    """The bias as the file stores it: rounded to float16 where ``spec.bias_dtype`` asks
    (straight-through gradient; values beyond float16's range unchanged)."""
    if b is None or spec.bias_dtype != "float16":
        return b
    half = b.detach().half().float().to(b.dtype)
    rounded = torch.where(torch.isfinite(half), half, b.detach())
    return b + (rounded - b).detach()


def fake_quantize(w: Tensor, spec: QuantSpec, scale: Tensor | None = None) -> Tensor:
    """``dequantize(quantize(w))`` with a straight-through gradient (identity in backward)."""
    q = quantize_tensor(w, spec, scale).dequantize().to(w.device, w.dtype)
    return w + (q - w).detach()


# --------------------------------------------------------------------------- QAT modules


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose forward uses the fake-quantized weight (STE): for QAT and PTQ.

    Parameters keep their names (``weight``, ``bias``), so masks and checkpoints still apply.
    """

    quant_spec: QuantSpec

    def forward(self, x: Tensor) -> Tensor:
        """``(B, ..., in)`` -> ``(B, ..., out)``."""
        spec = self.quant_spec
        return F.linear(x, fake_quantize(self.weight, spec), stored_bias(self.bias, spec))


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward uses the fake-quantized weight (STE)."""

    quant_spec: QuantSpec

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H', W')``."""
        spec = self.quant_spec
        return self._conv_forward(x, fake_quantize(self.weight, spec),
                                  stored_bias(self.bias, spec))


_QUANT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: QuantLinear,
                                                          nn.Conv2d: QuantConv2d}


def quant_spec_of(module: nn.Module) -> QuantSpec | None:
    """The :class:`QuantSpec` attached to ``module`` by :func:`quantize_`, else ``None``."""
    spec = getattr(module, "quant_spec", None)
    return spec if isinstance(spec, QuantSpec) else None


def quantizable_layers(model: nn.Module, names: Sequence[str] | None = None,
                       include_output: bool = True) -> dict[str, nn.Module]:
    """``name -> module`` of the plain ``nn.Linear``/``nn.Conv2d`` layers to quantize.

    ``names`` picks modules by name (``ValueError`` for unknown ones); by default every
    linear/conv layer (the output layer too unless ``include_output=False``).
    """
    from sparseprior.sparsity import output_layer_name

    layers = {n: m for n, m in model.named_modules() if type(m) in _QUANT_CLASSES
              or isinstance(m, (QuantLinear, QuantConv2d))}
    if names is not None:
        bad = [n for n in names if n not in layers]
        if bad:
            raise ValueError(f"unknown layer name(s) {bad} to quantize; the model's linear/conv "
                             f"layers are {list(layers)}")
        return {n: layers[n] for n in names}
    if not include_output:
        layers.pop(output_layer_name(model) or "", None)
    return layers


def quantize_(model: nn.Module, spec: QuantSpec, names: Sequence[str] | None = None, *,
              include_output: bool = True) -> list[str]:
    """Make linear/conv layers quantization-aware in place (their class becomes
    :class:`QuantLinear`/:class:`QuantConv2d`; weights and parameter names are unchanged).

    Train the model as usual for QAT (gradients pass straight through the rounding), then call
    :func:`freeze_quantized_` to write the quantized values into the weights (PTQ is
    ``quantize_`` followed directly by ``freeze_quantized_``). Returns the layer names.
    """
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    chosen = quantizable_layers(model, names, include_output)
    for module in chosen.values():
        base = nn.Linear if isinstance(module, nn.Linear) else nn.Conv2d
        module.__class__ = _QUANT_CLASSES[base]
        module.quant_spec = spec
    return list(chosen)


@torch.no_grad()
def freeze_quantized_(model: nn.Module) -> dict[str, QuantizedTensor]:
    """Replace each quantization-aware weight by its quantized values (in place; the bias
    rounded as ``spec.bias_dtype`` asks).

    The layers keep their :class:`QuantSpec` (so :mod:`~sparseprior.compress.pack` stores
    codes); quantizing a frozen weight again gives the same codes and values bit for bit
    (:func:`snap_to_grid`). Returns ``name -> codes``.
    """
    out = {}
    for name, module in model.named_modules():
        spec = quant_spec_of(module)
        if spec is None:
            continue
        q = snap_to_grid(module.weight, spec)
        module.weight.copy_(q.dequantize().to(module.weight))
        if module.bias is not None:
            module.bias.copy_(stored_bias(module.bias, spec))
        out[name] = q
    return out


def strip_quant_(model: nn.Module) -> nn.Module:
    """Turn quantization-aware layers back into plain ``nn.Linear``/``nn.Conv2d`` (in place)."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.__class__ = nn.Linear
        elif isinstance(module, QuantConv2d):
            module.__class__ = nn.Conv2d
        if "quant_spec" in module.__dict__:
            del module.__dict__["quant_spec"]
    return model


# --------------------------------------------------------------------------- int8 backend


def dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch dynamic int8: every ``nn.Linear`` (low-rank factors included) runs as an int8
    matmul with per-tensor int8 weights and activations quantized on the fly. Convolutions
    stay fp32 (dynamic quantization has no conv kernel). Returns a new eval-mode model."""
    import warnings

    plain = strip_quant_(copy.deepcopy(model)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(plain, {nn.Linear}, dtype=torch.qint8)


def spec_dict(spec: QuantSpec | None) -> dict[str, Any] | None:
    """JSON form of a spec (``None`` stays ``None``)."""
    return None if spec is None else spec.to_dict()


# --------------------------------------------------------------------------- recipe step


@dataclasses.dataclass
class QuantizeConfig(QuantSpec):
    """A :class:`QuantSpec` plus which layers: ``layers`` (module names; default all linear/conv
    layers) and ``include_output``."""

    layers: list[str] | None = None
    include_output: bool = True

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(QuantSpec)})


@register_step("quantize", QuantizeConfig,
               summary="k-bit uniform / power-of-two weights (PTQ, QAT)")
def quantize_step(state: StepState, config: QuantizeConfig) -> dict[str, Any]:
    """PTQ now (QAT when the step fine-tunes: training starts from the frozen codes)."""
    layers = quantize_(state.model, config.spec, config.layers,
                       include_output=config.include_output)
    freeze_quantized_(state.model)
    return {"layers": layers}
