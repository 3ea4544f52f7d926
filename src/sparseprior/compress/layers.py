"""The layer-type registry: how each parameter-holding layer is described, rebuilt, made plain.

A compressed model may hold layers the reference models never build (low-rank pairs,
SmartExchange ``Ce @ B`` layers, ...). Each such class registers, beside its definition, the
functions the rest of the package needs, so the packed file (:mod:`~.arch`), deployment
(:mod:`~.export`) and counting (:mod:`~.pipeline`) need no per-class branches::

    register_layer("LowRankLinear", LowRankLinear,
                   describe=lambda m: {"in": m.in_features, "out": m.out_features, ...},
                   build=lambda s: LowRankLinear(s["in"], s["out"], s["rank"], s["bias"]))

* ``describe(module) -> dict``: JSON sizes (the ``"type"`` key is added from the name);
* ``build(spec) -> module``: an untrained layer of exactly those sizes (``spec`` is what
  ``describe`` gave, lists in place of tuples);
* ``densify(module) -> module`` (optional): the plain layer used for deployment/ONNX export
  (e.g. a SmartExchange layer becomes ``nn.Linear`` with ``W = Ce @ B``); without it the layer
  is deployed as it is;
* ``dense_weight(module) -> Tensor`` (optional): the weight the layer multiplies with, for
  counting MACs and non-zeros (layers made of registered sub-layers leave it out);
* ``freeze(module)`` (optional): project training-time parameters onto their stored form after
  each compression step (e.g. SmartExchange's ``Ce`` to exact powers of two);
* ``quantizable``: the layer may carry a :class:`~.quantize.QuantSpec` (recorded as ``"quant"``).

Modules are matched by class, most specific first along the MRO (so ``QuantLinear``, a marked
``nn.Linear``, is a ``"Linear"`` with a ``"quant"`` field).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from sparseprior.common.registry import Registry

__all__ = [
    "LAYER_TYPES",
    "LayerType",
    "as_tuple",
    "conv_geometry",
    "geometry_kwargs",
    "layer_type_of",
    "register_layer",
    "unregister_layer",
]


@dataclasses.dataclass(frozen=True)
class LayerType:
    """One registered layer class and its functions (see the module docstring)."""

    name: str
    cls: type[nn.Module]
    describe: Callable[[Any], dict[str, Any]]
    build: Callable[[Mapping[str, Any]], nn.Module]
    densify: Callable[[Any], nn.Module] | None = None
    dense_weight: Callable[[Any], Tensor] | None = None
    freeze: Callable[[Any], None] | None = None
    quantizable: bool = False


LAYER_TYPES: Registry[LayerType] = Registry("layer type")
_BY_CLASS: dict[type[nn.Module], LayerType] = {}


def register_layer(name: str, cls: type[nn.Module], *, describe: Callable[[Any], dict[str, Any]],
                   build: Callable[[Mapping[str, Any]], nn.Module],
                   densify: Callable[[Any], nn.Module] | None = None,
                   dense_weight: Callable[[Any], Tensor] | None = None,
                   freeze: Callable[[Any], None] | None = None, quantizable: bool = False,
                   replace: bool = False) -> LayerType:
    """Register layer class ``cls`` under the architecture name ``name``; returns the entry.

    Raises ``ValueError`` when ``name`` or ``cls`` is already registered (``replace=True``
    redefines it) and ``TypeError`` when ``cls`` is not an ``nn.Module`` subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"layer type {name!r}: cls must be an nn.Module subclass, got {cls!r}")
    if cls in _BY_CLASS and _BY_CLASS[cls].name != name and not replace:
        raise ValueError(f"class {cls.__name__} is already registered as layer type "
                         f"{_BY_CLASS[cls].name!r}; pass replace=True to redefine it")
    entry = LayerType(name, cls, describe, build, densify, dense_weight, freeze, quantizable)
    if replace and name in LAYER_TYPES:
        _BY_CLASS.pop(LAYER_TYPES.get(name).cls, None)
    LAYER_TYPES.register(name, entry, replace=replace)
    _BY_CLASS[cls] = entry
    return entry


def unregister_layer(name: str) -> None:
    """Remove layer type ``name`` (tests, notebooks); unknown names are ignored."""
    if name in LAYER_TYPES:
        _BY_CLASS.pop(LAYER_TYPES.get(name).cls, None)
        LAYER_TYPES.unregister(name)


def layer_type_of(module: nn.Module) -> LayerType | None:
    """The entry of ``module``'s most specific registered class, else ``None`` (containers,
    activations, pooling)."""
    for klass in type(module).__mro__:
        entry = _BY_CLASS.get(klass)
        if entry is not None:
            return entry
    return None


# --------------------------------------------------------------------------- helpers


def as_tuple(value: Any) -> Any:
    """JSON lists back to tuples (kernel sizes, strides); other values unchanged."""
    return tuple(value) if isinstance(value, list) else value


def conv_geometry(m: Any) -> dict[str, Any]:
    """``kernel``, ``stride``, ``padding`` (list or a string such as ``"same"``), ``dilation``
    of a conv-like module, as JSON."""
    return {"kernel": list(m.kernel_size), "stride": list(m.stride),
            "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation)}


def geometry_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``stride``/``padding``/``dilation`` keyword arguments from a described conv layer."""
    return {k: as_tuple(spec.get(k)) for k in ("stride", "padding", "dilation")}


# --------------------------------------------------------------------------- torch's own layers


def _batchnorm(cls: type[nn.Module]) -> None:
    register_layer(
        cls.__name__, cls,
        describe=lambda m: {"features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                            "affine": m.affine, "track": m.track_running_stats},
        build=lambda s: cls(s["features"], eps=s["eps"], momentum=s["momentum"],
                            affine=s["affine"], track_running_stats=s["track"]))


register_layer(
    "Linear", nn.Linear,
    describe=lambda m: {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None},
    build=lambda s: nn.Linear(s["in"], s["out"], bias=s["bias"]),
    dense_weight=lambda m: m.weight, quantizable=True)
register_layer(
    "Conv2d", nn.Conv2d,
    describe=lambda m: {"in": m.in_channels, "out": m.out_channels, "groups": m.groups,
                        "bias": m.bias is not None, **conv_geometry(m)},
    build=lambda s: nn.Conv2d(s["in"], s["out"], as_tuple(s["kernel"]), groups=s["groups"],
                              bias=s["bias"], **geometry_kwargs(s)),
    dense_weight=lambda m: m.weight, quantizable=True)
_batchnorm(nn.BatchNorm2d)
_batchnorm(nn.BatchNorm1d)
