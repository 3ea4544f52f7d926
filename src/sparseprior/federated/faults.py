"""Injected faults for the simulation: corrupted updates a robust server must reject.

Each corruption takes a client's :class:`~sparseprior.federated.client.ClientUpdate` and returns
a broken copy; the server's checks (:func:`sparseprior.federated.server.check_update`) must
reject it under the reason named by the registry key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from sparseprior.common.registry import Registry
from sparseprior.federated.client import ClientUpdate

CORRUPTIONS: Registry[Callable[[ClientUpdate], ClientUpdate]] = Registry("corruption")


def _copy(update: ClientUpdate) -> ClientUpdate:
    return dataclasses.replace(
        update, weights={k: v.clone() for k, v in update.weights.items()},
        masks={k: v.clone() for k, v in update.masks.items()} if update.masks else None)


def _first_float(update: ClientUpdate, masked: bool | None = None) -> str:
    for name, w in update.weights.items():
        in_mask = bool(update.masks) and name in update.masks
        if w.is_floating_point() and (masked is None or in_mask == masked):
            return name
    raise ValueError("the update has no floating tensor to corrupt")


@CORRUPTIONS.register("nonfinite")
def nan_values(update: ClientUpdate) -> ClientUpdate:
    """A NaN and an inf in the first floating tensor."""
    out = _copy(update)
    w = out.weights[_first_float(out, masked=False)].view(-1)
    w[0] = float("nan")
    w[-1] = float("inf")
    return out


@CORRUPTIONS.register("shape")
def wrong_shape(update: ClientUpdate) -> ClientUpdate:
    """A non-masked tensor with one extra element."""
    out = _copy(update)
    name = _first_float(out, masked=False)
    out.weights[name] = torch.cat([out.weights[name].reshape(-1), torch.zeros(1)])
    return out


@CORRUPTIONS.register("density")
def wrong_density(update: ClientUpdate) -> ClientUpdate:
    """One more kept weight than the layer's budget (dense updates: a dense 'mask')."""
    out = _copy(update)
    if not out.masks:
        name = _first_float(out)
        out.masks = {name: torch.ones_like(out.weights[name], dtype=torch.bool)}
        return out
    name = next(iter(out.masks))
    flat = out.masks[name].view(-1)
    off = torch.nonzero(~flat).flatten()
    if len(off):
        flat[off[0]] = True
    else:
        flat[0] = False
    return out


@CORRUPTIONS.register("unknown_mask")
def unknown_mask(update: ClientUpdate) -> ClientUpdate:
    """A mask for a tensor the strategy does not sparsify."""
    out = _copy(update)
    name = next(n for n, w in out.weights.items()
                if w.is_floating_point() and not (out.masks and n in out.masks))
    out.masks = {**(out.masks or {}), name: torch.ones_like(out.weights[name], dtype=torch.bool)}
    return out
