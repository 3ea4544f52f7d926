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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.checkpoint import (
    load_safetensors_checkpoint,
    save_safetensors_checkpoint,
)
from sparseprior.models.base import forward_with_hooks
from sparseprior.sparsity.structure import (  # noqa: F401  (moved to the sparse core)
    ChannelGroup,
    ChannelMasks,
    apply_channel_masks_,
    channel_counts,
    check_channel_masks,
    dependency_graph,
    example_input_for,
    find_channel_groups,
    group_names,
    masked_model,
    slim_model,
)

SLIM_KIND = "earlybird/slim"


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
