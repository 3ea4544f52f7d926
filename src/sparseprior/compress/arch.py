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

import sparseprior.compress.lowrank  # noqa: F401  (registers the LowRank* layer types)
import sparseprior.compress.smartexchange  # noqa: F401  (registers SmartExchange* layers)
from sparseprior.compress.layers import LAYER_TYPES, as_tuple, layer_type_of
from sparseprior.compress.quantize import QuantSpec, quant_spec_of, quantize_

ARCH_VERSION = 1


def _spec(module: nn.Module) -> dict[str, Any] | None:
    """JSON spec of one layer, or ``None`` for modules of no registered layer type."""
    entry = layer_type_of(module)
    if entry is None:
        return None
    spec = {"type": entry.name, **entry.describe(module)}
    if entry.quantizable:
        quant = quant_spec_of(module)
        spec["quant"] = quant.to_dict() if quant is not None else None
    return spec


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
                             f"packed; registered layer types: {', '.join(LAYER_TYPES)} "
                             f"(see sparseprior.compress.layers.register_layer)")
    return {"version": ARCH_VERSION, "model": model_name, "build": _jsonable(dict(build)),
            "layers": layers}


def _make(spec: Mapping[str, Any]) -> nn.Module:
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r} in the architecture; registered: "
                         f"{', '.join(LAYER_TYPES)}")
    try:
        return LAYER_TYPES.get(kind).build(spec)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"invalid {kind} layer in the architecture ({type(err).__name__}: "
                         f"{err})") from None


def build_from_architecture(arch: Mapping[str, Any]) -> nn.Module:
    """The (untrained) model described by ``arch`` (from :func:`describe_architecture`)."""
    from sparseprior.models import build_model

    if not isinstance(arch, Mapping) or arch.get("version") != ARCH_VERSION:
        raise ValueError(f"architecture must be a dict with version {ARCH_VERSION}, got "
                         f"{type(arch).__name__} version {getattr(arch, 'get', dict)('version')}")
    build = {k: as_tuple(v) for k, v in dict(arch["build"]).items()}
    model = build_model(arch["model"], **build)
    for name, spec in arch["layers"].items():  # named_modules order: parents first
        if name:
            try:
                model.set_submodule(name, _make(spec))
            except AttributeError:
                raise ValueError(f"architecture layer {name!r} is not a module of "
                                 f"{arch['model']!r}") from None
        quant = spec.get("quant")
        if quant is not None:
            if not isinstance(quant, Mapping):
                raise ValueError(f"layer {name!r}: quant must be a mapping, got {quant!r}")
            quantize_(model, QuantSpec.from_dict(dict(quant)), names=[name])
    return model.eval()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
