"""The one mask mechanism: choose prunable weights, hold boolean masks, keep pruned weights at zero.

A :class:`MaskSet` maps parameter names (as in ``model.named_parameters()`` of the *unwrapped*
model) to boolean tensors of the same shape (``True`` = kept). Attached to a model and optimizer,
it keeps masked weights exactly zero through training:

* after ``backward`` the trainer (or the optimizer's step *pre*-hook) zeroes masked gradients;
* after ``optimizer.step()`` a step *post*-hook writes zeros into masked weights again;
* optimizer state (SGD momentum, Adam moments) is zeroed at masked positions when the mask is
  attached or changed, so weight decay and momentum cannot move a masked weight.

Sparsity is always counted from the actual tensors (:func:`sparsity_stats`), never the target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.checkpoint import (
    load_safetensors_checkpoint,
    save_safetensors_checkpoint,
)

MASK_KIND = "masks"


# --------------------------------------------------------------------------- selection


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside ``DistributedDataParallel``/``DataParallel``/compiled wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def output_layer_name(model: nn.Module) -> str | None:
    """Module name of the output layer.

    The model's ``output_layer_name`` attribute if it has one, else the last ``nn.Linear`` in
    ``named_modules()`` order, else ``None``.
    """
    model = unwrap_model(model)
    name = getattr(model, "output_layer_name", None)
    if isinstance(name, str):
        return name
    last = None
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = mod_name
    return last


def prunable_parameters(
    model: nn.Module,
    *,
    include_output: bool = False,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
    names: Sequence[str] | None = None,
) -> dict[str, nn.Parameter]:
    """The weights that may be pruned, in ``named_modules()`` order.

    By default the ``weight`` of every ``layer_types`` module (conv and linear; never biases or
    normalisation layers), except the output layer (see :func:`output_layer_name`) unless
    ``include_output``.

    ``names`` picks a subset explicitly; each entry is a parameter name (``"features.0.weight"``)
    or a module name (``"features.0"``, meaning its weight). Explicit names may include the output
    layer. An unknown name is a ``ValueError`` listing the valid ones.

    Returns:
        parameter name -> ``nn.Parameter`` (names relative to the unwrapped model).
    """
    model = unwrap_model(model)
    out_name = output_layer_name(model)
    candidates: dict[str, nn.Parameter] = {}
    default: list[str] = []
    for mod_name, module in model.named_modules():
        if not isinstance(module, layer_types):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        pname = f"{mod_name}.weight" if mod_name else "weight"
        candidates[pname] = weight
        if include_output or mod_name != out_name:
            default.append(pname)
    if names is None:
        return {n: candidates[n] for n in default}
    chosen: dict[str, nn.Parameter] = {}
    bad = []
    for raw in names:
        pname = raw if raw in candidates else f"{raw}.weight" if raw else "weight"
        if pname not in candidates:
            bad.append(raw)
        else:
            chosen[pname] = candidates[pname]
    if bad:
        raise ValueError(f"unknown prunable layer name(s) {bad}; valid names are "
                         f"{list(candidates)} (or their module names without '.weight')")
    return {n: chosen[n] for n in candidates if n in chosen}  # keep model order


# --------------------------------------------------------------------------- counting


class _Ratios:
    """``density = nonzero / total`` and ``sparsity = 1 - density`` from ``total``/``nonzero``."""

    total: int
    nonzero: int

    @property
    def density(self) -> float:
        return self.nonzero / self.total if self.total else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density


@dataclass(frozen=True)
class LayerSparsity(_Ratios):
    """Counts for one weight tensor."""

    name: str
    shape: tuple[int, ...]
    total: int
    nonzero: int

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "total": self.total, "nonzero": self.nonzero,
                "density": self.density, "sparsity": self.sparsity}


@dataclass(frozen=True)
class SparsityStats(_Ratios):
    """Global and per-layer counts of nonzero weights, from the actual tensors."""

    layers: dict[str, LayerSparsity]

    @property
    def total(self) -> int:  # type: ignore[override]
        return sum(layer.total for layer in self.layers.values())

    @property
    def nonzero(self) -> int:  # type: ignore[override]
        return sum(layer.nonzero for layer in self.layers.values())

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "nonzero": self.nonzero, "density": self.density,
                "sparsity": self.sparsity,
                "layers": {n: s.to_dict() for n, s in self.layers.items()}}


def _selected_parameters(model: nn.Module, names: Sequence[str] | None
                         ) -> Mapping[str, Tensor]:
    """The named parameters (checked to exist), or the prunable ones when ``names`` is None."""
    if names is None:
        return prunable_parameters(model)
    params = dict(model.named_parameters())
    _check_names_exist(names, params)
    return {n: params[n] for n in names}


def sparsity_stats(
    source: nn.Module | Mapping[str, Tensor], names: Sequence[str] | None = None
) -> SparsityStats:
    """Count zeros in real tensors.

    Args:
        source: a model (its :func:`prunable_parameters` by default) or a name -> tensor mapping.
        names: restrict to these parameter names.
    """
    if isinstance(source, nn.Module):
        model = unwrap_model(source)
        tensors: Mapping[str, Tensor] = _selected_parameters(model, names)
    else:
        tensors = source if names is None else {n: source[n] for n in names}
    layers = {}
    with torch.no_grad():
        for name, t in tensors.items():
            layers[name] = LayerSparsity(name, tuple(t.shape), t.numel(),
                                         int(torch.count_nonzero(t)))
    return SparsityStats(layers)


@torch.no_grad()
def zero_optimizer_state_(
    optimizer: torch.optim.Optimizer,
    params: Mapping[str, nn.Parameter],
    positions: Mapping[str, Tensor],
) -> None:
    """Zero every per-weight state tensor of ``params[n]`` where ``positions[n]`` is ``True``."""
    for name, p in params.items():
        state = optimizer.state.get(p)
        if not state:
            continue
        where = positions[name]
        for value in state.values():
            if isinstance(value, Tensor) and value.shape == p.shape:
                value.masked_fill_(where.to(value.device), 0)


def _check_names_exist(names: Sequence[str], params: Mapping[str, Any]) -> None:
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"parameter(s) {missing} not found in the model; it has "
                         f"{list(params)}")


# --------------------------------------------------------------------------- MaskSet


def _as_bool_mask(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"mask {name!r} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype == torch.bool:
        return value.detach().clone()
    if value.dtype.is_floating_point or value.dtype in (torch.uint8, torch.int8, torch.int16,
                                                        torch.int32, torch.int64):
        if not bool(((value == 0) | (value == 1)).all()):
            raise ValueError(f"mask {name!r} must hold only 0/1 values, got other values")
        return value.detach() != 0
    raise TypeError(f"mask {name!r} has dtype {value.dtype}; use torch.bool")


class MaskSet(Mapping[str, Tensor]):
    """Boolean masks keyed by parameter name (``True`` = weight kept).

    Typical use::

        masks = sparsify_(model, SparsityConfig(sparsity=0.9))    # build and apply
        masks.attach(model, optimizer)                            # keep zeros exact
        ...
        masks.update_(new_masks)                                  # DST / gradual pruning
        masks.stats(model).sparsity                               # counted from the weights

    The masks live on the device of the parameters once attached.
    """

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self._masks: dict[str, Tensor] = {n: _as_bool_mask(n, m) for n, m in masks.items()}
        self._params: dict[str, nn.Parameter] | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._handles: list[Any] = []
        # (name, dtype, device) -> (bool mask, its version, the mask as 0/1 of that dtype)
        self._factors: dict[tuple[str, torch.dtype, torch.device], tuple[Tensor, int, Tensor]] \
            = {}

    # ----- construction
    @classmethod
    def dense(cls, model: nn.Module, **selection: Any) -> MaskSet:
        """All-ones masks for ``prunable_parameters(model, **selection)``."""
        params = prunable_parameters(model, **selection)
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})

    @classmethod
    def from_weights(cls, model: nn.Module, names: Sequence[str] | None = None) -> MaskSet:
        """Masks that keep the currently nonzero weights (default: the prunable parameters)."""
        model = unwrap_model(model)
        tensors: Mapping[str, Tensor] = _selected_parameters(model, names)
        return cls({n: t.detach() != 0 for n, t in tensors.items()})

    # ----- mapping protocol
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __eq__(self, other: object) -> bool:
        """Same names (in any order), shapes and mask bits."""
        if not isinstance(other, MaskSet):
            return NotImplemented
        return set(self._masks) == set(other._masks) and all(
            m.shape == other._masks[n].shape and torch.equal(m.cpu(), other._masks[n].cpu())
            for n, m in self._masks.items())

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"MaskSet({len(self)} layers, density={self.density():.4f}, "
                f"attached={self.attached})")

    @property
    def names(self) -> list[str]:
        return list(self._masks)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(m.shape) for n, m in self._masks.items()}

    @property
    def attached(self) -> bool:
        return self._params is not None

    def clone(self) -> MaskSet:
        """A detached deep copy."""
        return MaskSet(self._masks)

    def to(self, device: str | torch.device) -> MaskSet:
        """Move the masks to ``device`` in place; returns ``self``."""
        self._masks = {n: m.to(device) for n, m in self._masks.items()}
        return self

    def density(self) -> float:
        """Fraction of ``True`` entries over all masks (the masks' own density)."""
        total = sum(m.numel() for m in self._masks.values())
        kept = sum(int(m.sum()) for m in self._masks.values())
        return kept / total if total else 1.0

    # ----- model binding
    def check_compatible(self, model: nn.Module) -> None:
        """Raise ``ValueError`` unless every mask names a parameter of ``model`` of equal shape."""
        params = dict(unwrap_model(model).named_parameters())
        missing = [n for n in self._masks if n not in params]
        wrong = [f"{n}: mask {tuple(m.shape)} vs weight {tuple(params[n].shape)}"
                 for n, m in self._masks.items() if n in params and params[n].shape != m.shape]
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"parameters {missing} are not in the model")
            if wrong:
                parts.append("shapes differ (" + "; ".join(wrong) + ")")
            raise ValueError("mask does not fit this model: " + " and ".join(parts)
                             + f". The model's parameters are {list(params)}")

    def _bound(self, model: nn.Module | None) -> dict[str, nn.Parameter]:
        if model is not None:
            self.check_compatible(model)
            params = dict(unwrap_model(model).named_parameters())
            return {n: params[n] for n in self._masks}
        if self._params is None:
            raise ValueError("this MaskSet is not attached; pass model=... or call attach() first")
        return self._params

    def _mask_on(self, name: str, device: torch.device) -> Tensor:
        mask = self._masks[name]
        if mask.device != device:
            mask = self._masks[name] = mask.to(device)
        return mask

    def _factor_on(self, name: str, like: Tensor) -> Tensor:
        """The mask as 0/1 values of ``like``'s dtype and device, cached (multiplying by a
        float mask is ~10x faster on CPU than by a bool one); rebuilt when the mask changes."""
        mask = self._mask_on(name, like.device)
        key = (name, like.dtype, like.device)
        hit = self._factors.get(key)
        if hit is None or hit[0] is not mask or hit[1] != mask._version:
            hit = (mask, mask._version, mask.to(like.dtype))
            self._factors[key] = hit
        return hit[2]

    @torch.no_grad()
    def apply_(self, model: nn.Module | None = None) -> MaskSet:
        """Zero the masked weights (of ``model`` or the attached model)."""
        for name, p in self._bound(model).items():
            p.mul_(self._factor_on(name, p))
        return self

    @torch.no_grad()
    def mask_grads_(self, model: nn.Module | None = None) -> MaskSet:
        """Zero gradients at masked positions (parameters without ``.grad`` are skipped)."""
        for name, p in self._bound(model).items():
            if p.grad is not None:
                p.grad.mul_(self._factor_on(name, p.grad))
        return self

    def mask_optimizer_state_(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module | None = None,
        positions: Mapping[str, Tensor] | None = None,
    ) -> MaskSet:
        """Zero per-weight optimizer state (momentum, Adam moments, ...).

        Every state tensor with the parameter's shape is zeroed where ``positions`` is ``True``
        (default: at the masked positions, ``~mask``). Scalar state such as Adam's ``step`` is
        left alone.
        """
        params = self._bound(model)
        if positions is None:
            positions = {n: ~self._mask_on(n, p.device) for n, p in params.items()}
        zero_optimizer_state_(optimizer, {n: params[n] for n in positions}, positions)
        return self

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
               ) -> MaskSet:
        """Bind to ``model`` (and ``optimizer``), apply the masks, and keep them applied.

        With an optimizer: masked optimizer state is zeroed now, a step pre-hook masks the
        gradients and a step post-hook re-applies the mask to the weights after every
        ``optimizer.step()``. Re-attaching first detaches. Returns ``self``.
        """
        self.detach()
        params = self._bound(model)
        for name, p in params.items():
            self._mask_on(name, p.device)
        self._params = params
        self.apply_()
        if optimizer is not None:
            self._optimizer = optimizer
            self.mask_optimizer_state_(optimizer)
            self._handles = [
                optimizer.register_step_pre_hook(self._before_step),
                optimizer.register_step_post_hook(self._after_step),
            ]
        return self

    def _before_step(self, *_: Any) -> None:
        if self.attached:
            self.mask_grads_()

    def _after_step(self, *_: Any) -> None:
        if self.attached:
            self.apply_()

    def detach(self) -> MaskSet:
        """Remove the optimizer hooks and forget the bound model. Returns ``self``."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._params = None
        self._optimizer = None
        return self

    @torch.no_grad()
    def update_(
        self,
        new_masks: Mapping[str, Tensor],
        *,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> dict[str, dict[str, int]]:
        """Replace some or all masks (dynamic sparse training, gradual pruning).

        Newly dropped weights are zeroed; newly grown weights start at exactly zero; optimizer
        state (of ``optimizer`` or the attached one) is reset at every changed position.

        Returns:
            name -> ``{"dropped": n, "grown": n}`` for each updated layer.
        """
        unknown = [n for n in new_masks if n not in self._masks]
        if unknown:
            raise ValueError(f"update_ got masks for unknown layer(s) {unknown}; "
                             f"this MaskSet has {self.names}")
        new = {n: _as_bool_mask(n, m) for n, m in new_masks.items()}
        for n, m in new.items():
            if m.shape != self._masks[n].shape:
                raise ValueError(f"update_: mask {n!r} has shape {tuple(m.shape)}, expected "
                                 f"{tuple(self._masks[n].shape)}")
        params = self._bound(model) if (model is not None or self.attached) else None
        opt = optimizer if optimizer is not None else self._optimizer
        changes: dict[str, dict[str, int]] = {}
        changed: dict[str, Tensor] = {}
        for n, m in new.items():
            old = self._masks[n]
            m = m.to(old.device)
            dropped, grown = old & ~m, ~old & m
            changes[n] = {"dropped": int(dropped.sum()), "grown": int(grown.sum())}
            changed[n] = dropped | grown
            self._masks[n] = m
            if params is not None:
                p = params[n]
                p.masked_fill_((~m | grown).to(p.device), 0)
        if opt is not None and params is not None:
            zero_optimizer_state_(opt, {n: params[n] for n in changed}, changed)
        return changes

    # ----- counting
    def stats(self, model: nn.Module | None = None) -> SparsityStats:
        """Sparsity of the masked *weights* (``model`` or the attached model), counted for real."""
        return sparsity_stats({n: p.detach() for n, p in self._bound(model).items()})

    # ----- persistence
    def state_dict(self) -> dict[str, Tensor]:
        """name -> bool tensor (on CPU, cloned)."""
        return {n: m.detach().to("cpu").clone() for n, m in self._masks.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load masks with exactly the same names and shapes (``ValueError`` otherwise).

        If attached, the new masks are applied to the weights (and optimizer state) at once.
        """
        missing = sorted(set(self._masks) - set(state))
        extra = sorted(set(state) - set(self._masks))
        if missing or extra:
            raise ValueError(f"mask state does not match this MaskSet: missing {missing}, "
                             f"unexpected {extra}")
        self.update_(state)

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Save to ``<path>.safetensors`` + ``<path>.json`` (atomic). Returns the tensor file."""
        shapes = {n: list(s) for n, s in self.shapes.items()}
        return save_safetensors_checkpoint(path, self.state_dict(), {"shapes": shapes},
                                           kind=MASK_KIND, meta=meta)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> MaskSet:
        """Load masks saved by :meth:`save`; with ``model``, check they fit it (``ValueError``)."""
        tensors, header = load_safetensors_checkpoint(path, kind=MASK_KIND)
        order = list(header.get("config", {}).get("shapes", {})) or list(tensors)
        masks = cls({n: tensors[n] for n in order})
        if model is not None:
            masks.check_compatible(model)
        return masks

    # ----- distributed
    def digest(self) -> str:
        """SHA-256 over names, shapes and mask bits; equal digests mean equal masks."""
        h = hashlib.sha256()
        for name in sorted(self._masks):
            m = self._masks[name].detach().to("cpu").contiguous()
            h.update(name.encode())
            h.update(str(tuple(m.shape)).encode())
            h.update(m.to(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def broadcast_(self, src: int = 0) -> MaskSet:
        """Copy rank ``src``'s masks to every rank (no-op without an initialised process group).

        Tensors travel as ``uint8`` on the masks' device (use CUDA masks with NCCL). If attached,
        the masks are re-applied to the weights.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        on_cuda = dist.get_backend() == "nccl"
        for name in sorted(self._masks):
            m = self._masks[name]
            buf = m.to(torch.uint8)
            if on_cuda and buf.device.type != "cuda":
                buf = buf.to(torch.device("cuda", torch.cuda.current_device()))
            dist.broadcast(buf, src=src)
            self._masks[name] = (buf != 0).to(m.device)
        if self.attached:
            self.apply_()
        return self
