"""Sparse-aware initialisation: keep every unit's signal scale when a mask removes its inputs.

A fan-in initialisation (Kaiming, ``Var w = 2 / fan_in``) assumes every input is connected.
Masking a layer to density ``d`` shrinks each unit's pre-activation variance by ``d``; through
``L`` unnormalised layers the signal shrinks by about ``d^(L/2)`` and training starts slowly.
Rescaling each unit's kept weights by ``sqrt(fan_in / kept fan_in)`` restores the dense
variance (the sparse-aware initialisation of Evci et al., "Gradient Flow in Sparse Neural
Networks and How Lottery Tickets Win", AAAI 2022).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

#: Initialisations of masked weights by name: ``fn(weights, masks) -> weights``.
SPARSE_INITS: dict[str, Callable[[Mapping[str, Tensor], Mapping[str, Tensor]],
                                 dict[str, Tensor]]] = {}


def kept_fan_in_scale(mask: Tensor) -> Tensor:
    """Per output unit ``sqrt(fan_in / kept fan_in)``: shape ``(out,)``; 1 for a unit with no
    kept input. ``mask``: ``(out, in)`` or ``(out, in, kh, kw)``, bool or 0/1."""
    if mask.dim() < 2:
        raise ValueError(f"mask must have an output and an input dimension, got shape "
                         f"{tuple(mask.shape)}")
    rows = mask.reshape(mask.shape[0], -1).to(torch.float64)
    kept = rows.sum(1)
    scale = torch.ones_like(kept)
    has = kept > 0
    scale[has] = (rows.shape[1] / kept[has]).sqrt()
    return scale


def rescale_to_kept_fan_in(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]
                           ) -> dict[str, Tensor]:
    """A copy of ``weights`` with every masked weight zeroed and each unit's kept weights
    multiplied by :func:`kept_fan_in_scale`; tensors without a mask are returned as they are."""
    out = dict(weights)
    for name, mask in masks.items():
        if name not in weights:
            raise KeyError(f"mask {name!r} has no weight of that name")
        w = weights[name]
        if tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, its weight "
                             f"{tuple(w.shape)}")
        scale = kept_fan_in_scale(mask).to(w.dtype).view(-1, *[1] * (w.dim() - 1))
        out[name] = w * mask.to(w.dtype) * scale
    return out


def unscaled(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``weights`` with the masked weights zeroed, the kept ones as initialised."""
    out = dict(weights)
    for name, mask in masks.items():
        out[name] = weights[name] * mask.to(weights[name].dtype)
    return out


SPARSE_INITS["rescaled"] = rescale_to_kept_fan_in
SPARSE_INITS["unscaled"] = unscaled


def init_masked_(model: nn.Module, masks: Mapping[str, Tensor], init: str = "unscaled"
                 ) -> nn.Module:
    """In place: the weights of ``model`` named in ``masks`` become ``SPARSE_INITS[init]`` of
    them (masked weights zeroed). Returns ``model``."""
    if init not in SPARSE_INITS:
        raise ValueError(f"unknown sparse init {init!r}; choose one of {sorted(SPARSE_INITS)}")
    params = dict(model.named_parameters())
    missing = [n for n in masks if n not in params]
    if missing:
        raise KeyError(f"masks name parameters the model lacks: {missing}")
    new = SPARSE_INITS[init]({n: params[n].detach() for n in masks},
                             {n: m.to(params[n].device) for n, m in masks.items()})
    with torch.no_grad():
        for name in masks:
            params[name].copy_(new[name])
    return model
