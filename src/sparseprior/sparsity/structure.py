"""Shared structure helpers: channel groups, the dependency graph, channel masks and slimming.

Used by both :mod:`sparseprior.tickets` (Early-Bird) and :mod:`sparseprior.compress`
(structured pruning), so it lives in the sparse core and imports neither.

A *channel mask* is a dict ``{bn_name: bool tensor (C,)}`` (``True`` = keep) over the
``BatchNorm2d`` layers of a model, named as in ``model.named_modules()``.

* :func:`find_channel_groups` uses Torch-Pruning's dependency graph to find which BN layers are
  *coupled* (their channels must be removed together, e.g. every ``bn2`` of a ResNet stage, the
  stem BN and the shortcut BN share the residual stream). A group is one pruning unit: all its
  BN layers get the same mask.
* :func:`channel_masks` / :func:`masks_from_scores` turn ``|gamma|`` (or any per-channel score)
  into keep-masks at a pruning ratio, globally or per layer.
* :func:`apply_channel_masks_` zeroes gamma *and* beta of pruned channels, so in eval mode those
  channels output exactly 0 (and 0 after ReLU, max-pool, avg-pool, residual sums of zeros).
  That is the "masked model".
* :func:`slim_model` removes the pruned channels for real (the producing conv's filters, the BN
  entries and the consuming convs'/linear's input channels), via
  ``torch_pruning.DependencyGraph``; the result computes the same function as the masked model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.validation import check_choice, check_positive_int

ChannelMasks = dict[str, Tensor]
PRUNE_SCOPES = ("global", "layerwise")

__all__ = [
    "PRUNE_SCOPES",
    "ChannelGroup",
    "ChannelMasks",
    "apply_channel_masks_",
    "bn_layers",
    "channel_counts",
    "channel_masks",
    "check_channel_masks",
    "dependency_graph",
    "example_input_for",
    "find_channel_groups",
    "group_names",
    "group_scores",
    "masked_model",
    "masks_from_scores",
    "slim_model",
]


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """BN layers whose output channels are coupled (pruned together), and their width.

    ``names`` are module names as in ``named_modules()``; the first is the group's
    representative. ``channels`` is the number of channels ``C`` every member has.
    """

    names: tuple[str, ...]
    channels: int

    @property
    def coupled(self) -> bool:
        """True when more than one BN layer shares these channels (e.g. a residual stream)."""
        return len(self.names) > 1


# --------------------------------------------------------------------------- groups


def example_input_for(model: nn.Module, batch_size: int = 2) -> Tensor:
    """A zero input for tracing: ``model.example_input(batch_size)`` (reference models)."""
    make = getattr(model, "example_input", None)
    if not callable(make):
        raise ValueError(f"{type(model).__name__} has no example_input(); pass example_input= "
                         f"(a tensor of shape (batch, *input_shape)) explicitly")
    return make(batch_size)


def dependency_graph(model: nn.Module, example_input: Tensor) -> Any:
    """Torch-Pruning's dependency graph of ``model`` traced with ``example_input`` (shared with
    :mod:`sparseprior.compress.structured`)."""
    import torch_pruning as tp

    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input,
                                                     verbose=False)


def find_channel_groups(model: nn.Module, example_input: Tensor | None = None, *,
                        coupled: bool = True) -> list[ChannelGroup]:
    """The prunable BN channel groups of ``model``, in ``named_modules()`` order.

    Traces a deep copy in eval mode (so running statistics are untouched). With
    ``coupled=False`` only BN layers that can be pruned on their own are returned (for a CIFAR
    ResNet: the ``bn1`` inside each BasicBlock; for VGG: every BN).

    Args:
        model: a network with ``BatchNorm2d`` layers.
        example_input: ``(B, *input_shape)``; default ``model.example_input(2)``.
        coupled: also return groups of several coupled BN layers.
    """
    import torch_pruning as tp

    if example_input is None:
        example_input = example_input_for(model)
    traced = copy.deepcopy(model).eval()
    dg = dependency_graph(traced, example_input.detach().clone())
    names = {m: n for n, m in traced.named_modules()}
    groups: list[ChannelGroup] = []
    seen: set[str] = set()
    for name, module in traced.named_modules():
        if not isinstance(module, nn.BatchNorm2d) or name in seen:
            continue
        group = dg.get_pruning_group(module, tp.prune_batchnorm_out_channels, idxs=[0])
        members = [name] + [names[item.dep.target.module] for item in group
                            if isinstance(item.dep.target.module, nn.BatchNorm2d)
                            and names[item.dep.target.module] != name]
        members = list(dict.fromkeys(members))
        seen.update(members)
        if len(members) > 1 and not coupled:
            continue
        groups.append(ChannelGroup(tuple(members), int(module.num_features)))
    if not groups:
        raise ValueError(f"{type(model).__name__} has no prunable BatchNorm2d channels "
                         f"(coupled={coupled}); Early-Bird needs BN layers")
    return groups


def group_names(groups: Sequence[ChannelGroup]) -> list[str]:
    """All BN layer names of ``groups``, flattened."""
    return [n for g in groups for n in g.names]


# --------------------------------------------------------------------------- masks


def check_channel_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """``ValueError`` unless every key names a BN layer of ``model`` and every mask is a bool
    ``(C,)`` tensor with at least one ``True``."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        bn = modules.get(name)
        if not isinstance(bn, nn.BatchNorm2d):
            raise ValueError(f"mask key {name!r} is not a BatchNorm2d layer of "
                             f"{type(model).__name__}")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or \
                tuple(mask.shape) != (bn.num_features,):
            raise ValueError(f"mask {name!r} must be a bool tensor of shape "
                             f"({bn.num_features},), got {getattr(mask, 'dtype', type(mask))} "
                             f"{tuple(getattr(mask, 'shape', ()))}")
        if not bool(mask.any()):
            raise ValueError(f"mask {name!r} prunes all {bn.num_features} channels; keep at "
                             f"least one per layer")


@torch.no_grad()
def apply_channel_masks_(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Zero gamma and beta of every pruned channel, in place; returns ``model``.

    In eval mode a pruned channel then outputs exactly 0 (BN output is
    ``gamma * x_hat + beta``), so downstream layers see zeros there.
    """
    check_channel_masks(model, masks)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        bn = modules[name]
        keep = mask.to(bn.weight.device, bn.weight.dtype)
        bn.weight.mul_(keep)
        bn.bias.mul_(keep)
    return model


def masked_model(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy of ``model`` with :func:`apply_channel_masks_` applied."""
    return apply_channel_masks_(copy.deepcopy(model), masks)


def _check_groups_cover(groups: Sequence[ChannelGroup], masks: Mapping[str, Tensor]) -> None:
    for g in groups:
        present = [n for n in g.names if n in masks]
        if present and len(present) != len(g.names):
            raise ValueError(f"coupled BN layers {list(g.names)} must all have masks (only "
                             f"{present} have); use masks_for_groups to expand them")
        if len(present) > 1:
            first = masks[present[0]]
            if any(not torch.equal(masks[n].cpu(), first.cpu()) for n in present[1:]):
                raise ValueError(f"coupled BN layers {list(g.names)} need identical masks")


@torch.no_grad()
def slim_model(model: nn.Module, masks: Mapping[str, Tensor],
               example_input: Tensor | None = None) -> nn.Module:
    """A smaller dense copy of ``model`` with the pruned channels removed.

    The copy first gets :func:`apply_channel_masks_` (so it equals the masked model on the
    kept channels), then Torch-Pruning removes each group's pruned channels together with the
    coupled conv filters and the consumers' input channels. ``model`` is not modified.
    Coupled BN layers (see :func:`find_channel_groups`) must carry identical masks.

    Returns the slimmed copy, in eval mode when ``model`` was; state-dict keys are unchanged.
    """
    import torch_pruning as tp

    check_channel_masks(model, masks)
    if example_input is None:
        example_input = example_input_for(model)
    slim = masked_model(model, masks)
    was_training = slim.training
    slim.eval()
    groups = find_channel_groups(slim, example_input)
    _check_groups_cover(groups, masks)
    dg = dependency_graph(slim, example_input.detach().clone())
    modules = dict(slim.named_modules())
    for g in groups:
        if g.names[0] not in masks:
            continue
        pruned = (~masks[g.names[0]].cpu()).nonzero().flatten().tolist()
        if pruned:
            group = dg.get_pruning_group(modules[g.names[0]], tp.prune_batchnorm_out_channels,
                                         idxs=pruned)
            group.prune()
    slim.train(was_training)
    return slim


def channel_counts(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, int]:
    """``{bn_name: num_features}`` for the BN layers ``names`` (default: every BatchNorm2d)."""
    modules = dict(model.named_modules())
    if names is None:
        names = [n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)]
    return {n: int(modules[n].num_features) for n in names}


# --------------------------------------------------------------------------- scores -> masks


def _check_prune_ratio(prune_ratio: float) -> None:
    if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, (int, float)) or \
            not 0.0 < float(prune_ratio) < 1.0:
        raise ValueError(f"prune_ratio must be in (0, 1) (fraction of channels to remove), "
                         f"got {prune_ratio!r}")


def bn_layers(model: nn.Module, names: Sequence[str]) -> list[nn.BatchNorm2d]:
    """The ``BatchNorm2d`` modules called ``names`` (``ValueError`` naming any missing)."""
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), nn.BatchNorm2d)]
    if missing:
        raise ValueError(f"BN layer(s) {missing} not found in {type(model).__name__}")
    return [modules[n] for n in names]


@torch.no_grad()
def group_scores(model: nn.Module, groups: Sequence[ChannelGroup]) -> list[Tensor]:
    """Per group a float ``(C,)`` CPU tensor: ``|gamma|``, the max over coupled BN layers."""
    out = []
    for g in groups:
        layers = bn_layers(model, g.names)
        out.append(torch.stack([bn.weight.detach().abs().float().cpu() for bn in layers])
                   .amax(dim=0))
    return out


def masks_from_scores(scores: Sequence[Tensor], prune_ratio: float, *, scope: str = "global",
                      min_channels: int = 1) -> list[Tensor]:
    """Bool keep-masks (same shapes as ``scores``, each ``(C_l,)``) pruning a ``prune_ratio``
    fraction of channels with the smallest scores.

    ``scope="global"``: the ``floor(p * sum_l C_l)`` smallest scores over all layers (ties go
    to the earlier channel); ``"layerwise"``: ``floor(p * C_l)`` per layer. Afterwards every layer
    keeps at least ``min_channels`` (its highest-scored ones), so the network stays connected.
    """
    _check_prune_ratio(prune_ratio)
    check_choice(scope, "scope", PRUNE_SCOPES)
    min_channels = check_positive_int(min_channels, "min_channels")
    if not scores:
        raise ValueError("scores must hold at least one layer")
    if scope == "layerwise":
        masks = [_prune_smallest(s.flatten(), int(prune_ratio * s.numel())) for s in scores]
    else:
        flat = torch.cat([s.flatten().float() for s in scores])
        keep = _prune_smallest(flat, int(prune_ratio * flat.numel()))
        masks = list(keep.split([s.numel() for s in scores]))
    out = []
    for s, m in zip(scores, masks, strict=True):
        need = min(min_channels, s.numel())
        if int(m.sum()) < need:
            m = m.clone()
            m[torch.argsort(s.flatten(), descending=True, stable=True)[:need]] = True
        out.append(m.reshape(s.shape))
    return out


def _prune_smallest(scores: Tensor, k: int) -> Tensor:
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    return keep


def channel_masks(model: nn.Module, groups: Sequence[ChannelGroup], prune_ratio: float, *,
                  scope: str = "global", min_channels: int = 1) -> ChannelMasks:
    """``{bn_name: bool (C,)}`` for every BN layer of ``groups`` (coupled layers share a mask),
    from the current ``|gamma|`` (see :func:`masks_from_scores`)."""
    group_masks = masks_from_scores(group_scores(model, groups), prune_ratio, scope=scope,
                                    min_channels=min_channels)
    return {n: m for g, m in zip(groups, group_masks, strict=True) for n in g.names}
