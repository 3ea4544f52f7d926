"""Structured pruning: remove whole neurons / channels, giving a physically smaller dense model.

Two paths, one entry point (:func:`structured_prune`):

* **Networks with BatchNorm** (ResNet, VGG): the channel-slimming machinery of
  :mod:`sparseprior.sparsity.structure` (Torch-Pruning dependency graph, coupled residual
  channels pruned together), scored by ``|gamma|`` as in network slimming / Early-Bird.
* **Networks without BatchNorm** (LeNet-300-100, LeNet-5, MLPs): *units* are the output neurons
  of each hidden ``Linear`` and the output channels of each ``Conv2d`` (never the output layer).
  A unit is scored by the L2 norm of its incoming weights (row of ``W``, filter of a conv)
  plus its bias. The *masked model* zeroes the unit's weights and bias, so with a ReLU-type
  activation (``f(0) = 0``) and max/avg pooling it outputs exactly 0 and downstream layers see
  zeros. :func:`prune_units` then removes those units for real through Torch-Pruning's
  dependency graph (the producing rows/filters, and the consumers' input columns, flatten
  included), so the small model computes the same function as the masked one.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.config import Config
from sparseprior.common.validation import check_range
from sparseprior.compress.steps import StepState, register_step
from sparseprior.sparsity.structure import (
    channel_masks,
    dependency_graph,
    example_input_for,
    find_channel_groups,
    masks_from_scores,
    slim_model,
)

UnitMasks = dict[str, Tensor]


@dataclasses.dataclass
class StructuredConfig(Config):
    """How many units to remove.

    Attributes:
        ratio: fraction of the units (neurons / channels) removed in each prunable layer.
        ratios: per-layer override, module name -> ratio (e.g. ``{"features.0": 0.7}``).
        min_units: every layer keeps at least this many units.
    """

    ratio: float = 0.5
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)
    min_units: int = 1

    def validate(self) -> None:
        check_range(float(self.ratio), "ratio", 0.0, 1.0, high_inclusive=False)
        for name, r in self.ratios.items():
            check_range(float(r), f"ratios[{name!r}]", 0.0, 1.0, high_inclusive=False)
        if isinstance(self.min_units, bool) or not isinstance(self.min_units, int) or \
                self.min_units < 1:
            raise ValueError(f"min_units must be an integer >= 1, got {self.min_units!r}")


def has_batchnorm(model: nn.Module) -> bool:
    """True when the model has ``BatchNorm2d`` layers (the slimming path applies)."""
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def unit_layers(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """The layers whose output units may be removed: every plain ``nn.Linear``/``nn.Conv2d``
    except the output layer, in ``named_modules()`` order."""
    from sparseprior.sparsity import output_layer_name

    out = output_layer_name(model)
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and n != out}


@torch.no_grad()
def unit_scores(layer: nn.Linear | nn.Conv2d) -> Tensor:
    """``(units,)``: L2 norm of each unit's incoming weights and bias."""
    rows = layer.weight.detach().reshape(layer.weight.shape[0], -1).float()
    if layer.bias is not None:
        rows = torch.cat([rows, layer.bias.detach().float()[:, None]], dim=1)
    return rows.norm(dim=1).cpu()


def unit_masks(model: nn.Module, config: StructuredConfig) -> UnitMasks:
    """``{layer_name: bool (units,)}`` (``True`` = kept) removing each layer's lowest-scored
    ``floor(ratio * units)`` units (at least ``min_units`` kept)."""
    layers = unit_layers(model)
    unknown = sorted(set(config.ratios) - set(layers))
    if unknown:
        raise ValueError(f"ratios names unknown layer(s) {unknown}; prunable layers are "
                         f"{list(layers)}")
    out = {}
    for name, layer in layers.items():
        ratio = float(config.ratios.get(name, config.ratio))
        out[name] = masks_from_scores([unit_scores(layer)], ratio, scope="layerwise",
                                      min_channels=config.min_units)[0]
    return out


@torch.no_grad()
def apply_unit_masks_(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Zero the weights and bias of every removed unit, in place (the *masked model*)."""
    modules = dict(model.named_modules())
    for name, keep in masks.items():
        layer = modules.get(name)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or keep.shape != (layer.weight.shape[0],):
            raise ValueError(f"unit mask {name!r} must name a linear/conv layer and have shape "
                             f"({getattr(getattr(layer, 'weight', None), 'shape', ['?'])[0]},)")
        k = keep.to(layer.weight.device, layer.weight.dtype)
        layer.weight.mul_(k.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is not None:
            layer.bias.mul_(k)
    return model


@torch.no_grad()
def prune_units(model: nn.Module, masks: Mapping[str, Tensor],
                example_input: Tensor | None = None) -> nn.Module:
    """A physically smaller copy of ``model`` without the masked units (``model`` unchanged).

    The copy is first masked (:func:`apply_unit_masks_`), then Torch-Pruning removes each
    layer's pruned output units together with the consumers' matching inputs.
    """
    import torch_pruning as tp

    if example_input is None:
        example_input = example_input_for(model)
    small = apply_unit_masks_(copy.deepcopy(model), masks)
    was_training = small.training
    small.eval()
    dg = dependency_graph(small, example_input.detach().clone())
    modules = dict(small.named_modules())
    for name, keep in masks.items():
        layer = modules[name]
        pruned = (~keep.cpu()).nonzero().flatten().tolist()
        if not pruned:
            continue
        fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else \
            tp.prune_conv_out_channels
        dg.get_pruning_group(layer, fn, idxs=pruned).prune()
    small.train(was_training)
    return small


def structured_prune(model: nn.Module, config: StructuredConfig | None = None,
                     example_input: Tensor | None = None) -> tuple[nn.Module, dict[str, int]]:
    """Remove ``config.ratio`` of the units/channels; returns ``(small_model, kept)`` where
    ``kept`` maps each pruned layer (or BN layer) to its remaining width. ``model`` is not
    modified."""
    config = config or StructuredConfig()
    if has_batchnorm(model):
        groups = find_channel_groups(model, example_input)
        masks = channel_masks(model, groups, config.ratio, scope="layerwise",
                              min_channels=config.min_units)
        small = slim_model(model, masks, example_input)
    else:
        masks = unit_masks(model, config)
        small = prune_units(model, masks, example_input)
    return small, {n: int(m.sum()) for n, m in masks.items()}


@register_step("structured", StructuredConfig,
               summary="remove neurons/channels -> smaller dense model")
def structured_step(state: StepState, config: StructuredConfig) -> dict[str, Any]:
    """Replace ``state.model`` by its physically smaller copy (masks dropped)."""
    state.model, kept = structured_prune(state.model, config, state.example_input)
    state.masks = None
    return {"kept_units": kept}
