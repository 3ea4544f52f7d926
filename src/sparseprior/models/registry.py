"""The model registry: a plain dict of builders and :func:`build_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from sparseprior.common.validation import check_choice
from sparseprior.models.base import ClassifierModel, as_size
from sparseprior.models.lenet import LeNet5
from sparseprior.models.mlp import MLP, lenet_300_100
from sparseprior.models.resnet import ResNet
from sparseprior.models.vgg import VGG


def _mlp(in_channels: int, num_classes: int, input_size: int | tuple[int, int], *,
         hidden: list[int] | tuple[int, ...] = (300, 100)) -> MLP:
    shape = (in_channels, *as_size(input_size))
    return MLP(shape[0] * shape[1] * shape[2], list(hidden), num_classes, input_shape=shape)


def _resnet_of(fixed_depth: int) -> Callable[..., ResNet]:
    def build(in_channels: int, num_classes: int, input_size: int | tuple[int, int], *,
              width: float = 1.0, zero_init_residual: bool = False) -> ResNet:
        return ResNet(fixed_depth, in_channels, num_classes, input_size, width=width,
                      zero_init_residual=zero_init_residual)
    build.__doc__ = f"ResNet-{fixed_depth} (CIFAR style)."
    return build


def _resnet(in_channels: int, num_classes: int, input_size: int | tuple[int, int], *,
            depth: int = 20, width: float = 1.0, zero_init_residual: bool = False) -> ResNet:
    return ResNet(depth, in_channels, num_classes, input_size, width=width,
                  zero_init_residual=zero_init_residual)


def _vgg_of(default_cfg: str) -> Callable[..., VGG]:
    def build(in_channels: int, num_classes: int, input_size: int | tuple[int, int], *,
              cfg: list[int | str] | str = default_cfg, width: float = 1.0) -> VGG:
        return VGG(cfg, in_channels, num_classes, input_size, width=width)
    return build


def _lenet5(in_channels: int, num_classes: int, input_size: int | tuple[int, int]) -> LeNet5:
    return LeNet5(in_channels, num_classes, input_size)


def _lenet300(in_channels: int, num_classes: int, input_size: int | tuple[int, int]) -> MLP:
    return lenet_300_100(in_channels, num_classes, input_size)


#: name -> builder ``(in_channels, num_classes, input_size, **kw) -> ClassifierModel``.
MODELS: dict[str, Callable[..., ClassifierModel]] = {
    "lenet300": _lenet300,
    "mlp": _mlp,
    "lenet5": _lenet5,
    "resnet20": _resnet_of(20),
    "resnet32": _resnet_of(32),
    "resnet56": _resnet_of(56),
    "resnet": _resnet,
    "vgg-small": _vgg_of("small"),
    "vgg11": _vgg_of("vgg11"),
    "vgg16": _vgg_of("vgg16"),
}


def model_options(name: str) -> list[str]:
    """The extra keyword arguments ``build_model(name, ...)`` accepts, e.g. ``["hidden"]``."""
    if name not in MODELS:
        raise ValueError(f"model name={name!r} is unknown; allowed: {sorted(MODELS)}")
    params = inspect.signature(MODELS[name]).parameters
    return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]


def check_model_spec(name: str, options: Any) -> None:
    """Raise ``ValueError`` unless ``name`` is a known model and ``options`` (a dict) holds only
    keywords its builder accepts."""
    check_choice(name, "model", MODELS)
    if not isinstance(options, dict):
        raise ValueError(f"model_options must be a dict, got {options!r}")
    unknown = sorted(set(options) - set(model_options(name)))
    if unknown:
        raise ValueError(f"model {name!r} does not take model_options {unknown}; "
                         f"allowed: {model_options(name) or 'none'}")


def build_model(name: str, *, in_channels: int = 1, num_classes: int = 10,
                input_size: int | tuple[int, int] = 28, **kw: Any) -> ClassifierModel:
    """Build model ``name`` for inputs ``(B, in_channels, *input_size)``, giving logits
    ``(B, num_classes)``.

    Names and extra keywords: ``lenet300``; ``mlp`` (``hidden``: list of widths, default
    [300, 100]); ``lenet5``; ``resnet20``/``resnet32``/``resnet56`` (``width``,
    ``zero_init_residual``); ``resnet`` (``depth`` = 6n+2, ``width``, ``zero_init_residual``);
    ``vgg-small``/``vgg11``/``vgg16`` (``cfg``, ``width``).

    The final linear layer is ``model.output_layer_name`` (``"classifier"``).
    Raises ``ValueError`` for an unknown name or keyword, or a bad depth / size.
    """
    allowed = model_options(name)
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"model {name!r} does not take option(s) {unknown}; "
                         f"allowed: {allowed or 'none'}")
    return MODELS[name](in_channels, num_classes, input_size, **kw)


def build_model_for(name: str, splits: Any, **kw: Any) -> ClassifierModel:
    """Build ``name`` for a dataset: reads ``splits.input_shape`` ``(C, H, W)`` and
    ``splits.num_classes`` (e.g. a :class:`sparseprior.data.DatasetSplits`)."""
    c, h, w = splits.input_shape
    return build_model(name, in_channels=c, num_classes=splits.num_classes, input_size=(h, w),
                       **kw)


def get_output_layer(model: nn.Module) -> nn.Linear:
    """The final classifier layer of ``model`` (named by ``model.output_layer_name``)."""
    name = getattr(model, "output_layer_name", None)
    if not isinstance(name, str):
        raise ValueError(f"{type(model).__name__} has no output_layer_name attribute")
    return model.get_submodule(name)
