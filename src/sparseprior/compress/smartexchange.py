"""SmartExchange (Zhao et al., 2020): ``W ~= Ce @ B`` with a small dense basis ``B`` and a
sparse ``Ce`` whose non-zeros are signed powers of two.

A layer weight (``(out, in)`` or ``(out, in, kh, kw)``) is viewed as ``W_mat`` of shape
``(M, n)``: each row of ``W.reshape(out, fan_in)`` is cut into blocks of ``n`` consecutive
values (``n`` divides ``fan_in``; for a ``k x k`` conv the natural choice is ``n = k``), so
``M = out * fan_in / n``. Then ``W_mat ~= Ce (M, r) @ B (r, n)``.

:func:`se_decompose` finds ``Ce, B`` by alternating least squares with rounding and
thresholding:

1. ``B`` starts as the top-``r`` right singular vectors of ``W_mat``;
2. ``Ce`` step: least squares ``Ce = W_mat B^T (B B^T)^-1``, each column rescaled so its largest
   magnitude is 1 (the scale moves into ``B``'s row, which leaves ``Ce @ B`` unchanged), entries
   with ``|c| < threshold`` set to 0, the rest rounded to ``sign * 2^e`` in the log domain
   with ``e`` in ``[1 - M_e, 0]`` (``M_e = 2^(bits-1) - 1``; entries below
   ``2^(1-M_e)/sqrt 2`` become 0);
3. ``B`` step: least squares ``B = (Ce^T Ce)^-1 Ce^T W_mat`` for the fixed ``Ce``;
4. stop after ``iterations`` or when an iteration would *increase* the relative error
   ``||W_mat - Ce B||_F / ||W_mat||_F`` (that iteration is rejected), so the recorded errors
   never increase.

:class:`SmartExchangeLinear`/:class:`SmartExchangeConv2d` hold ``ce`` and ``basis`` as
parameters; their forward rebuilds ``W = (P(ce) * support) @ basis`` where ``P`` is the same
power-of-two projection with a straight-through gradient and ``support`` the fixed non-zero
pattern, so re-training keeps the ``Ce @ B`` form. ``Ce``'s codes are :mod:`.quantize`'s
``pow2`` codes with a fixed scale of 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseprior.common.config import Config
from sparseprior.common.validation import check_positive_int, check_range
from sparseprior.compress.layers import as_tuple, conv_geometry, geometry_kwargs, register_layer
from sparseprior.compress.quantize import QuantSpec, fake_quantize, quantize_tensor
from sparseprior.compress.steps import StepState, register_step

ONE = torch.ones(1)


@dataclasses.dataclass
class SmartExchangeConfig(Config):
    """SmartExchange settings.

    Attributes:
        basis_size: target block width ``n`` (the divisor of each layer's fan-in closest to it
            is used; conv layers use ``kw`` when it divides).
        rank: columns of ``Ce`` / rows of ``B`` (``None``: ``n``, a square basis as in the paper).
        bits: code width of ``Ce`` (1 sign bit + exponent index; exponents ``[2 - 2^(bits-1), 0]``).
        threshold: magnitudes of the rescaled ``Ce`` below this become 0 (sparsity knob).
        iterations: alternating least-squares iterations.
        layers: module names (default: every linear/conv layer but the output).
        include_output: also decompose the output layer.
    """

    basis_size: int = 8
    rank: int | None = None
    bits: int = 4
    threshold: float = 0.05
    iterations: int = 20
    layers: list[str] | None = None
    include_output: bool = False

    def validate(self) -> None:
        check_positive_int(self.basis_size, "basis_size")
        if self.rank is not None:
            check_positive_int(self.rank, "rank")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or \
                not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer in [2, 8], got {self.bits!r}")
        check_range(float(self.threshold), "threshold", 0.0, 1.0)
        check_positive_int(self.iterations, "iterations")

    @property
    def spec(self) -> QuantSpec:
        """The ``pow2`` code spec of ``Ce`` (per tensor, scale fixed to 1)."""
        return QuantSpec(bits=self.bits, scheme="pow2", granularity="tensor")

    @property
    def exponent_range(self) -> tuple[int, int]:
        """Allowed exponents ``(e_min, e_max)`` of ``Ce``'s non-zeros."""
        return 1 - self.spec.max_exponent_steps, 0


def project_pow2(c: Tensor, config: SmartExchangeConfig) -> Tensor:
    """Threshold then round to ``0`` or ``+-2^e``, ``e`` in :attr:`exponent_range`."""
    kept = torch.where(c.abs() >= config.threshold, c, torch.zeros_like(c))
    return quantize_tensor(kept, config.spec, ONE).dequantize().to(c)


@dataclasses.dataclass
class Decomposition:
    """Result of :func:`se_decompose`: ``ce (M, r)``, ``basis (r, n)`` and the relative
    reconstruction error after each accepted iteration (``errors[0]``: initial projection)."""

    ce: Tensor
    basis: Tensor
    errors: list[float]

    @property
    def density(self) -> float:
        return float((self.ce != 0).float().mean())


def _rel_error(w: Tensor, ce: Tensor, b: Tensor) -> float:
    return float(torch.linalg.norm(w - ce @ b) / torch.linalg.norm(w).clamp_min(1e-30))


def _ce_step(w: Tensor, b: Tensor, config: SmartExchangeConfig) -> tuple[Tensor, Tensor]:
    """Least-squares ``Ce`` for fixed ``B``, column-normalised and projected; returns
    ``(ce, b_rescaled)``."""
    ce = torch.linalg.lstsq(b.T, w.T).solution.T  # (M, r): min ||ce @ b - w||
    scale = ce.abs().amax(dim=0).clamp_min(1e-12)
    return project_pow2(ce / scale, config), b * scale[:, None]


def _b_step(w: Tensor, ce: Tensor, b_old: Tensor) -> Tensor:
    """Least-squares ``B`` for fixed ``Ce`` (an all-zero ``Ce`` column keeps its old row)."""
    used = ce.abs().sum(dim=0) > 0
    b = b_old.clone()
    if bool(used.any()):
        b[used] = torch.linalg.lstsq(ce[:, used], w).solution
    return b


@torch.no_grad()
def se_decompose(w_mat: Tensor, config: SmartExchangeConfig | None = None,
                 rank: int | None = None) -> Decomposition:
    """Alternating least squares for ``w_mat (M, n) ~= Ce (M, r) @ B (r, n)`` (see module doc).

    Computed in float64; returns float32 tensors.
    """
    config = config or SmartExchangeConfig()
    if w_mat.dim() != 2:
        raise ValueError(f"w_mat must be 2-D (M, n), got shape {tuple(w_mat.shape)}")
    w = w_mat.detach().double().cpu()
    n = w.shape[1]
    r = min(rank or config.rank or n, n)
    b = torch.linalg.svd(w, full_matrices=False)[2][:r]
    ce, b = _ce_step(w, b, config)
    b = _b_step(w, ce, b)
    errors = [_rel_error(w, ce, b)]
    for _ in range(config.iterations - 1):
        ce_new, b_new = _ce_step(w, b, config)
        b_new = _b_step(w, ce_new, b_new)
        err = _rel_error(w, ce_new, b_new)
        if err >= errors[-1]:
            break
        ce, b = ce_new, b_new
        errors.append(err)
    return Decomposition(ce.float(), b.float(), errors)


def block_size(fan_in: int, target: int, kernel_width: int | None = None) -> int:
    """Block width ``n``: ``kernel_width`` if it divides ``fan_in``, else the divisor of
    ``fan_in`` closest to ``target`` (ties: the smaller)."""
    if kernel_width and kernel_width > 1 and fan_in % kernel_width == 0:
        return kernel_width
    divisors = [d for d in range(1, fan_in + 1) if fan_in % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


# --------------------------------------------------------------------------- modules


class _SmartExchangeMixin(nn.Module):
    """Shared parameters: ``ce (M, r)``, ``basis (r, n)``, ``bias``; buffer ``support``."""

    weight_shape: tuple[int, ...]

    def _init_se(self, weight_shape: Sequence[int], n: int, rank: int, bias: bool,
                 config: SmartExchangeConfig) -> None:
        self.weight_shape = tuple(int(s) for s in weight_shape)
        rows = math.prod(self.weight_shape) // n
        self.config = config
        self.ce = nn.Parameter(torch.zeros(rows, rank))
        self.basis = nn.Parameter(torch.zeros(rank, n))
        self.bias = nn.Parameter(torch.zeros(self.weight_shape[0])) if bias else None
        self.register_buffer("support", torch.zeros(rows, rank, dtype=torch.bool),
                             persistent=False)

    def set_factors_(self, ce: Tensor, basis: Tensor) -> None:
        """Load ``Ce`` and ``B``; the support becomes ``ce != 0``."""
        with torch.no_grad():
            self.ce.copy_(ce)
            self.basis.copy_(basis)
            self.support.copy_(ce != 0)

    def quant_targets(self) -> dict[str, tuple[QuantSpec, Tensor | None]]:
        """Parameters stored as codes by the packer: ``ce`` as pow2 codes with scale 1."""
        return {"ce": (self.config.spec, ONE)}

    def projected_ce(self) -> Tensor:
        """``P(ce) * support`` with a straight-through gradient, ``(M, r)``."""
        return fake_quantize(self.ce, self.config.spec, ONE) * self.support

    def weight_from_factors(self) -> Tensor:
        """``(P(ce) * support) @ basis`` reshaped to the layer's weight shape."""
        return (self.projected_ce() @ self.basis).reshape(self.weight_shape)

    @torch.no_grad()
    def freeze_(self) -> None:
        """Project ``ce`` in place (exact powers of two on the support)."""
        self.ce.copy_(self.projected_ce())

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():  # the support is not stored: it is where ce is non-zero
            self.support.copy_(self.ce != 0)


class SmartExchangeLinear(_SmartExchangeMixin):
    """A linear layer stored as ``Ce @ B``. Input ``(B, ..., in)``, output ``(B, ..., out)``."""

    def __init__(self, in_features: int, out_features: int, n: int, rank: int,
                 bias: bool = True, config: SmartExchangeConfig | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_se((out_features, in_features), n, rank, bias,
                      config or SmartExchangeConfig())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_from_factors(), self.bias)


class SmartExchangeConv2d(_SmartExchangeMixin):
    """A conv layer stored as ``Ce @ B``. Input ``(B, C_in, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 n: int, rank: int, stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] | str = (0, 0), dilation: tuple[int, int] = (1, 1),
                 bias: bool = True, config: SmartExchangeConfig | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.dilation = tuple(dilation)
        self._init_se((out_channels, in_channels, *self.kernel_size), n, rank, bias,
                      config or SmartExchangeConfig())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight_from_factors(), self.bias, self.stride, self.padding,
                        self.dilation)


def decompose_layer(layer: nn.Linear | nn.Conv2d, config: SmartExchangeConfig
                    ) -> tuple[SmartExchangeLinear | SmartExchangeConv2d, Decomposition]:
    """The SmartExchange form of ``layer`` (same bias) and its decomposition."""
    weight = layer.weight.detach()
    fan_in = weight[0].numel()
    kw = layer.kernel_size[1] if isinstance(layer, nn.Conv2d) else None
    n = block_size(fan_in, config.basis_size, kw)
    dec = se_decompose(weight.reshape(-1, n), config)
    rank = dec.ce.shape[1]
    bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("grouped convolutions are not supported by SmartExchange")
        new: SmartExchangeLinear | SmartExchangeConv2d = SmartExchangeConv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, n, rank, layer.stride,
            layer.padding, layer.dilation, bias, config)
    elif isinstance(layer, nn.Linear):
        new = SmartExchangeLinear(layer.in_features, layer.out_features, n, rank, bias, config)
    else:
        raise TypeError(f"layer must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    new.set_factors_(dec.ce, dec.basis)
    if bias:
        with torch.no_grad():
            new.bias.copy_(layer.bias.detach())
    return new.to(weight.device), dec


def smartexchange_(model: nn.Module, config: SmartExchangeConfig | None = None
                   ) -> dict[str, Decomposition]:
    """Replace chosen linear/conv layers by their SmartExchange form (in place).

    Returns ``name -> Decomposition`` (errors per iteration, ``Ce`` density).
    """
    from sparseprior.sparsity import prunable_parameters

    config = config or SmartExchangeConfig()
    params = prunable_parameters(model, include_output=config.include_output,
                                 names=config.layers)
    modules = dict(model.named_modules())
    out = {}
    for pname in params:
        name = pname[: -len(".weight")]
        layer = modules[name]
        if type(layer) not in (nn.Linear, nn.Conv2d):
            continue
        new, dec = decompose_layer(layer, config)
        model.set_submodule(name, new)
        out[name] = dec
    return out


def freeze_smartexchange_(model: nn.Module) -> int:
    """Project every SmartExchange layer's ``ce`` to exact powers of two; returns the count."""
    layers = [m for m in model.modules() if isinstance(m, _SmartExchangeMixin)]
    for m in layers:
        m.freeze_()
    return len(layers)


def is_smartexchange(module: nn.Module) -> bool:
    """True for :class:`SmartExchangeLinear`/:class:`SmartExchangeConv2d`."""
    return isinstance(module, _SmartExchangeMixin)


# --------------------------------------------------------------------------- registrations


def _se_sizes(m: _SmartExchangeMixin) -> dict[str, Any]:
    rows, rank = m.ce.shape
    return {"n": int(m.basis.shape[1]), "rank": int(rank), "rows": int(rows),
            "bias": m.bias is not None, "config": m.config.to_dict()}


@torch.no_grad()
def densify_layer(module: SmartExchangeLinear | SmartExchangeConv2d) -> nn.Linear | nn.Conv2d:
    """The plain ``nn.Linear``/``nn.Conv2d`` with ``W = P(Ce) @ B`` and the same bias."""
    if isinstance(module, SmartExchangeLinear):
        dense: nn.Linear | nn.Conv2d = nn.Linear(module.in_features, module.out_features,
                                                 bias=module.bias is not None)
    else:
        dense = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                          stride=module.stride, padding=module.padding,
                          dilation=module.dilation, bias=module.bias is not None)
    dense.weight.copy_(module.weight_from_factors())
    if module.bias is not None:
        dense.bias.copy_(module.bias)
    return dense.to(module.ce.device)


register_layer(
    "SmartExchangeLinear", SmartExchangeLinear,
    describe=lambda m: {"in": m.in_features, "out": m.out_features, **_se_sizes(m)},
    build=lambda s: SmartExchangeLinear(s["in"], s["out"], s["n"], s["rank"], s["bias"],
                                        SmartExchangeConfig.from_dict(s["config"])),
    densify=densify_layer, dense_weight=lambda m: m.weight_from_factors(),
    freeze=lambda m: m.freeze_())
register_layer(
    "SmartExchangeConv2d", SmartExchangeConv2d,
    describe=lambda m: {"in": m.in_channels, "out": m.out_channels, **_se_sizes(m),
                        **conv_geometry(m)},
    build=lambda s: SmartExchangeConv2d(s["in"], s["out"], as_tuple(s["kernel"]), s["n"],
                                        s["rank"], bias=s["bias"],
                                        config=SmartExchangeConfig.from_dict(s["config"]),
                                        **geometry_kwargs(s)),
    densify=densify_layer, dense_weight=lambda m: m.weight_from_factors(),
    freeze=lambda m: m.freeze_())


@register_step("smartexchange", SmartExchangeConfig,
               summary="W ~= Ce @ B, Ce sparse powers of two")
def smartexchange_step(state: StepState, config: SmartExchangeConfig) -> dict[str, Any]:
    """Re-express layers as ``Ce @ B``; the layer structure changes, so masks are dropped."""
    decs = smartexchange_(state.model, config)
    state.masks = None
    return {"ce_density": {n: d.density for n, d in decs.items()},
            "rel_error": {n: d.errors[-1] for n, d in decs.items()}}
