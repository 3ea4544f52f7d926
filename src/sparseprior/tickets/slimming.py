"""Physical channel slimming: BN channel masks -> a smaller *dense* network.

A *channel mask* is a dict ``{bn_name: bool tensor (C,)}`` (``True`` = keep) over the
``BatchNorm2d`` layers of a model, named as in ``model.named_modules()``.

* :func:`find_channel_groups` uses Torch-Pruning's dependency graph to find which BN layers are
  *coupled* (their channels must be removed together, e.g. every ``bn2`` of a ResNet stage, the
  stem BN and the shortcut BN share the residual stream). A group is one pruning unit: all its
  BN layers get the same mask.
* :func:`apply_channel_masks_` zeroes gamma *and* beta of pruned channels, so in eval mode those
  channels output exactly 0 (and 0 after ReLU, max-pool, avg-pool, residual sums of zeros).
  That is the "masked model".
* :func:`slim_model` removes the pruned channels for real (the producing conv's filters, the BN
  entries and the consuming convs'/linear's input channels), via
  ``torch_pruning.DependencyGraph``; the result computes the same function as the masked model.
* :func:`save_slimmed` / :func:`load_slimmed` store a slimmed model in the one checkpoint format
  (safetensors + JSON with the model name, its build arguments and the per-BN channel counts).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.checkpoint import (
    load_safetensors_checkpoint,
    save_safetensors_checkpoint,
)
from sparseprior.models.base import forward_with_hooks

SLIM_KIND = "earlybird/slim"
ChannelMasks = dict[str, Tensor]


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


# --------------------------------------------------------------------------- cost


def count_params(model: nn.Module) -> int:
    """Number of parameters (every ``nn.Parameter``, BN included)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example_input: Tensor | None = None) -> int:
    """Multiply-accumulates of one forward pass *per input sample*, conv and linear layers.

    Conv2d: ``out.numel() / B * (C_in / groups) * kh * kw``; Linear: ``out.numel() / B *
    in_features`` (biases, BN, activations and pooling are not counted). One FLOP count
    convention used here: ``FLOPs = 2 * MACs``.
    """
    if example_input is None:
        example_input = example_input_for(model, batch_size=1)
    total = [0]

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        per_sample = output.numel() // max(1, output.shape[0])
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += per_sample * (module.in_channels // module.groups) * k
        else:
            total[0] += per_sample * module.in_features

    forward_with_hooks(model, example_input, hook,
                       lambda m: isinstance(m, (nn.Conv2d, nn.Linear)))
    return int(total[0])


# --------------------------------------------------------------------------- checkpoints


def save_slimmed(model: nn.Module, path: str | Path, *, model_name: str,
                 build_kwargs: Mapping[str, Any], meta: Mapping[str, Any] | None = None
                 ) -> Path:
    """Save a slimmed model: its tensors (safetensors) and how to rebuild its shape (JSON).

    ``model_name``/``build_kwargs`` rebuild the *full* network with
    ``sparseprior.models.build_model(model_name, **build_kwargs)``; the per-BN channel counts
    stored beside them shrink it to the slim shape in :func:`load_slimmed`. Returns the
    ``.safetensors`` path.
    """
    config = {"model": model_name, "build": _jsonable(dict(build_kwargs)),
              "channels": channel_counts(model)}
    return save_safetensors_checkpoint(path, dict(model.state_dict()), config, kind=SLIM_KIND,
                                       meta=_jsonable(dict(meta or {})))


def load_slimmed(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save_slimmed` (eval mode, on ``device``).

    Rebuilds the full network, removes channels to the stored per-BN counts (the last ones;
    only the shapes matter), then loads the saved weights strictly.
    """
    from sparseprior.models import build_model

    tensors, header = load_safetensors_checkpoint(path, kind=SLIM_KIND)
    cfg = header["config"]
    build = dict(cfg["build"])
    if "input_size" in build and isinstance(build["input_size"], list):
        build["input_size"] = tuple(build["input_size"])
    full = build_model(cfg["model"], **build)
    counts = {str(k): int(v) for k, v in cfg["channels"].items()}
    have = channel_counts(full)
    if sorted(have) != sorted(counts):
        raise ValueError(f"checkpoint {str(path)!r} has BN layers {sorted(counts)} but "
                         f"{cfg['model']!r} built from {build} has {sorted(have)}")
    masks = {n: torch.arange(have[n]) < counts[n] for n in counts if counts[n] != have[n]}
    slim = slim_model(full, masks) if masks else full
    slim.load_state_dict(tensors, strict=True)
    return slim.to(device).eval()


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
