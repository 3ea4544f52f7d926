"""Describe a compressed model's architecture as JSON and rebuild it (for packed files).

A compressed model is a registry model (``build_model(name, **build)``) whose layers were
shrunk (structured pruning), split (low rank), re-expressed (SmartExchange) or marked as
quantized. :func:`describe_architecture` records, for every layer that holds parameters, its
type and sizes; :func:`build_from_architecture` builds the registry model and swaps in layers
of exactly those types and sizes (parents before children), ready for ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from sparseprior.compress.lowrank import LowRankConv2d, LowRankLinear
from sparseprior.compress.quantize import QuantSpec, quant_spec_of, quantize_
from sparseprior.compress.smartexchange import (
    SmartExchangeConfig,
    SmartExchangeConv2d,
    SmartExchangeLinear,
)

ARCH_VERSION = 1


def _conv_geometry(m: Any) -> dict[str, Any]:
    return {"kernel": list(m.kernel_size), "stride": list(m.stride),
            "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation)}


def _spec(module: nn.Module) -> dict[str, Any] | None:
    """JSON spec of one layer, or ``None`` for modules without own sizes (containers, ReLU)."""
    if isinstance(module, (SmartExchangeLinear, SmartExchangeConv2d)):
        rows, rank = module.ce.shape
        spec: dict[str, Any] = {"n": int(module.basis.shape[1]), "rank": int(rank),
                                "rows": int(rows), "bias": module.bias is not None,
                                "config": module.config.to_dict()}
        if isinstance(module, SmartExchangeLinear):
            return {"type": "SmartExchangeLinear", "in": module.in_features,
                    "out": module.out_features, **spec}
        return {"type": "SmartExchangeConv2d", "in": module.in_channels,
                "out": module.out_channels, **spec, **_conv_geometry(module)}
    if isinstance(module, LowRankLinear):
        return {"type": "LowRankLinear", "in": module.in_features, "out": module.out_features,
                "rank": module.rank, "bias": module.second.bias is not None}
    if isinstance(module, LowRankConv2d):
        return {"type": "LowRankConv2d", "in": module.in_channels, "out": module.out_channels,
                "rank": module.rank, "bias": module.second.bias is not None,
                **_conv_geometry(module.first)}
    quant = quant_spec_of(module)
    qd = quant.to_dict() if quant is not None else None
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in": module.in_features, "out": module.out_features,
                "bias": module.bias is not None, "quant": qd}
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in": module.in_channels, "out": module.out_channels,
                "groups": module.groups, "bias": module.bias is not None, "quant": qd,
                **_conv_geometry(module)}
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return {"type": type(module).__name__, "features": module.num_features,
                "eps": module.eps, "momentum": module.momentum, "affine": module.affine,
                "track": module.track_running_stats}
    return None


def describe_architecture(model: nn.Module, model_name: str, build: Mapping[str, Any]
                          ) -> dict[str, Any]:
    """``{"model", "build", "layers": {name: spec}}`` for :func:`build_from_architecture`.

    Raises ``ValueError`` for a parameter-holding layer type it cannot describe.
    """
    layers: dict[str, Any] = {}
    for name, module in model.named_modules():
        spec = _spec(module)
        if spec is not None:
            layers[name] = spec
        elif name and any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"layer {name!r} of type {type(module).__name__} cannot be "
                             f"packed; supported: Linear, Conv2d, BatchNorm, LowRank*, "
                             f"SmartExchange*")
    return {"version": ARCH_VERSION, "model": model_name, "build": _jsonable(dict(build)),
            "layers": layers}


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _make(spec: Mapping[str, Any]) -> nn.Module:
    kind = spec["type"]
    geo = {"stride": _tuple(spec.get("stride")), "padding": _tuple(spec.get("padding")),
           "dilation": _tuple(spec.get("dilation"))}
    if kind == "Linear":
        return nn.Linear(spec["in"], spec["out"], bias=spec["bias"])
    if kind == "Conv2d":
        return nn.Conv2d(spec["in"], spec["out"], _tuple(spec["kernel"]), groups=spec["groups"],
                         bias=spec["bias"], **geo)
    if kind in ("BatchNorm2d", "BatchNorm1d"):
        cls = nn.BatchNorm2d if kind == "BatchNorm2d" else nn.BatchNorm1d
        return cls(spec["features"], eps=spec["eps"], momentum=spec["momentum"],
                   affine=spec["affine"], track_running_stats=spec["track"])
    if kind == "LowRankLinear":
        return LowRankLinear(spec["in"], spec["out"], spec["rank"], spec["bias"])
    if kind == "LowRankConv2d":
        return LowRankConv2d(spec["in"], spec["out"], spec["rank"], _tuple(spec["kernel"]),
                             bias=spec["bias"], **geo)
    if kind == "SmartExchangeLinear":
        return SmartExchangeLinear(spec["in"], spec["out"], spec["n"], spec["rank"],
                                   spec["bias"], SmartExchangeConfig.from_dict(spec["config"]))
    if kind == "SmartExchangeConv2d":
        return SmartExchangeConv2d(spec["in"], spec["out"], _tuple(spec["kernel"]), spec["n"],
                                   spec["rank"], bias=spec["bias"],
                                   config=SmartExchangeConfig.from_dict(spec["config"]), **geo)
    raise ValueError(f"unknown layer type {kind!r} in the architecture")


def build_from_architecture(arch: Mapping[str, Any]) -> nn.Module:
    """The (untrained) model described by ``arch`` (from :func:`describe_architecture`)."""
    from sparseprior.models import build_model

    if not isinstance(arch, Mapping) or arch.get("version") != ARCH_VERSION:
        raise ValueError(f"architecture must be a dict with version {ARCH_VERSION}, got "
                         f"{type(arch).__name__} version {getattr(arch, 'get', dict)('version')}")
    build = {k: _tuple(v) for k, v in dict(arch["build"]).items()}
    model = build_model(arch["model"], **build)
    for name, spec in arch["layers"].items():  # named_modules order: parents first
        if name:
            model.set_submodule(name, _make(spec))
        quant = spec.get("quant")
        if quant is not None:
            quantize_(model, QuantSpec.from_dict(quant), names=[name])
    return model.eval()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
