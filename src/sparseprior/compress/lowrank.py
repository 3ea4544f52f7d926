"""Low-rank factorization: a linear/conv layer becomes two smaller layers (truncated SVD).

For a weight ``W`` reshaped to ``(out, in * kh * kw)`` with SVD ``W = U S V^T``, rank ``r``:

* ``Linear(in, out)`` -> ``LowRankLinear``: ``Linear(in, r, bias=False)`` with weight
  ``sqrt(S_r) V_r^T`` then ``Linear(r, out)`` with weight ``U_r sqrt(S_r)`` and the old bias;
* ``Conv2d(in, out, k, stride, padding)`` -> ``LowRankConv2d``: ``Conv2d(in, r, k, stride,
  padding, bias=False)`` then a ``1x1`` ``Conv2d(r, out)`` with the old bias.

At full rank the factorized layer computes the same function (up to float rounding). The rank is
chosen by *energy* (smallest ``r`` with ``sum(S_1..r^2) >= energy * sum(S^2)``) or by *budget*
(``r = round(rank_ratio * min(out, in*kh*kw))``); a layer is only factorized when the two
factors have fewer parameters than the original weight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.config import Config
from sparseprior.common.validation import check_positive_int, check_range
from sparseprior.compress.layers import as_tuple, conv_geometry, geometry_kwargs, register_layer
from sparseprior.compress.steps import StepState, register_step


class LowRankLinear(nn.Module):
    """``x -> second(first(x))``: ``first = Linear(in, rank, bias=False)``,
    ``second = Linear(rank, out)``. Input ``(B, ..., in)``, output ``(B, ..., out)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True
                 ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))


class LowRankConv2d(nn.Module):
    """``Conv2d(in, rank, k, stride, padding, dilation, bias=False)`` then a 1x1
    ``Conv2d(rank, out)``. Input ``(B, in, H, W)``, output ``(B, out, H', W')``."""

    def __init__(self, in_channels: int, out_channels: int, rank: int, kernel_size: tuple[int, int],
                 stride: tuple[int, int] = (1, 1), padding: tuple[int, int] | str = (0, 0),
                 dilation: tuple[int, int] = (1, 1), bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.first = nn.Conv2d(in_channels, rank, kernel_size, stride=stride, padding=padding,
                               dilation=dilation, bias=False)
        self.second = nn.Conv2d(rank, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))


@dataclasses.dataclass
class LowRankConfig(Config):
    """How to pick ranks.

    Attributes:
        energy: keep the smallest rank holding this fraction of the squared singular values
            (used when ``rank_ratio`` is ``None``).
        rank_ratio: budget: ``rank = round(rank_ratio * min(out, fan_in))`` (overrides energy).
        min_rank: lower bound on the rank.
        layers: module names to factorize (default: every linear/conv layer but the output).
        include_output: also factorize the output layer (default layers only).
    """

    energy: float = 0.9
    rank_ratio: float | None = None
    min_rank: int = 1
    layers: list[str] | None = None
    include_output: bool = False

    def validate(self) -> None:
        check_range(float(self.energy), "energy", 0.0, 1.0, low_inclusive=False)
        if self.rank_ratio is not None:
            check_range(float(self.rank_ratio), "rank_ratio", 0.0, 1.0, low_inclusive=False)
        check_positive_int(self.min_rank, "min_rank")


def _matrix(layer: nn.Linear | nn.Conv2d) -> Tensor:
    return layer.weight.detach().reshape(layer.weight.shape[0], -1).float()


def choose_rank(singular_values: Tensor, config: LowRankConfig) -> int:
    """Rank for singular values ``S`` (descending, shape ``(n,)``) under ``config``."""
    n = singular_values.numel()
    if config.rank_ratio is not None:
        rank = round(config.rank_ratio * n)
    else:
        energy = singular_values.double() ** 2
        cum = torch.cumsum(energy, 0) / energy.sum().clamp_min(1e-300)
        rank = int(torch.searchsorted(cum, torch.tensor(config.energy, dtype=cum.dtype))) + 1
    return max(config.min_rank, min(rank, n))


def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(A, B)`` with ``A (out, r) @ B (r, fan_in) ~= weight.reshape(out, -1)`` (balanced
    ``sqrt(S)`` split); the best rank-``r`` approximation in Frobenius norm."""
    mat = weight.detach().reshape(weight.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()


def factorize_layer(layer: nn.Linear | nn.Conv2d, rank: int) -> LowRankLinear | LowRankConv2d:
    """The two-layer factorization of ``layer`` at ``rank`` (see the module docstring)."""
    a, b = svd_factors(layer.weight, rank)
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        new: LowRankLinear | LowRankConv2d = LowRankLinear(
            layer.in_features, layer.out_features, rank, bias)
        new.first.weight.data.copy_(b)
        new.second.weight.data.copy_(a)
    elif isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("grouped convolutions are not factorized (groups != 1)")
        new = LowRankConv2d(layer.in_channels, layer.out_channels, rank, layer.kernel_size,
                            layer.stride, layer.padding, layer.dilation, bias)
        new.first.weight.data.copy_(b.reshape(rank, *layer.weight.shape[1:]))
        new.second.weight.data.copy_(a.reshape(layer.out_channels, rank, 1, 1))
    else:
        raise TypeError(f"layer must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    if bias:
        new.second.bias.data.copy_(layer.bias.detach())
    return new.to(layer.weight.device)


def _layers(model: nn.Module, names: Sequence[str] | None, include_output: bool
            ) -> dict[str, nn.Linear | nn.Conv2d]:
    from sparseprior.sparsity import prunable_parameters

    params = prunable_parameters(model, include_output=include_output, names=names)
    modules = dict(model.named_modules())
    return {n[: -len(".weight")]: modules[n[: -len(".weight")]] for n in params
            if type(modules[n[: -len(".weight")]]) in (nn.Linear, nn.Conv2d)}


@torch.no_grad()
def factorize_(model: nn.Module, config: LowRankConfig | None = None) -> dict[str, int]:
    """Replace chosen linear/conv layers by their truncated-SVD factorization (in place).

    Layers where the factors would not save parameters are left alone. Returns
    ``name -> rank`` of the factorized layers.
    """
    config = config or LowRankConfig()
    ranks = {}
    for name, layer in _layers(model, config.layers, config.include_output).items():
        mat = _matrix(layer)
        rank = choose_rank(torch.linalg.svdvals(mat.double()), config)
        out, fan_in = mat.shape
        if rank * (out + fan_in) >= out * fan_in:
            continue
        model.set_submodule(name, factorize_layer(layer, rank))
        ranks[name] = rank
    return ranks


# --------------------------------------------------------------------------- registrations

register_layer(
    "LowRankLinear", LowRankLinear,
    describe=lambda m: {"in": m.in_features, "out": m.out_features, "rank": m.rank,
                        "bias": m.second.bias is not None},
    build=lambda s: LowRankLinear(s["in"], s["out"], s["rank"], s["bias"]))
register_layer(
    "LowRankConv2d", LowRankConv2d,
    describe=lambda m: {"in": m.in_channels, "out": m.out_channels, "rank": m.rank,
                        "bias": m.second.bias is not None, **conv_geometry(m.first)},
    build=lambda s: LowRankConv2d(s["in"], s["out"], s["rank"], as_tuple(s["kernel"]),
                                  bias=s["bias"], **geometry_kwargs(s)))


@register_step("lowrank", LowRankConfig, summary="truncated-SVD factorization into two layers")
def lowrank_step(state: StepState, config: LowRankConfig) -> dict[str, Any]:
    """Factorize in place; the layer structure changes, so masks are dropped."""
    ranks = factorize_(state.model, config)
    state.masks = None
    return {"ranks": ranks}
