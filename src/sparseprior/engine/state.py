"""Turn nested state (dicts of tensors, numbers, strings) into safetensors + JSON, and back.

Nothing is pickled: tensors go to a flat ``name -> tensor`` dict (saved with safetensors) and
everything else into a JSON "skeleton" where ``{"__tensor__": name}`` marks a tensor,
``{"__tuple__": [...]}`` a tuple, ``{"__dict__": [[key, value], ...]}`` a dict (keys may be ints,
as in optimizer state) and ``{"__float__": "nan"}`` a non-finite float.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

_ALLOWED = ("tensors, numbers, strings, None, and lists/tuples/dicts of them")


def flatten_state(obj: Any, prefix: str = "state") -> tuple[Any, dict[str, Tensor]]:
    """Split ``obj`` into a JSON-able skeleton and ``name -> tensor`` (CPU copies).

    Raises:
        TypeError: for any other object type (naming where it was found).
    """
    tensors: dict[str, Tensor] = {}
    skeleton = _encode(obj, prefix, tensors)
    return skeleton, tensors


def _join(path: str, key: object) -> str:
    return f"{path}/{key}" if path else str(key)


def _encode(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        if path in tensors:
            raise ValueError(f"two tensors would be stored under {path!r}; rename a key")
        tensors[path] = obj.detach().to("cpu").clone().contiguous()
        return {"__tensor__": path}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"cannot checkpoint dict key {key!r} at {path!r}: keys must "
                                f"be str or int")
            items.append([key, _encode(value, _join(path, key), tensors)])
        return {"__dict__": items}
    if isinstance(obj, np.ndarray):
        return _encode(torch.from_numpy(obj.copy()), path, tensors)
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path!r}; state may contain "
                    f"only {_ALLOWED}")


def unflatten_state(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__tensor__" in skeleton:
        name = skeleton["__tensor__"]
        if name not in tensors:
            raise ValueError(f"checkpoint is missing tensor {name!r}")
        return tensors[name]
    if "__tuple__" in skeleton:
        return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    if "__dict__" in skeleton:
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
    if "__float__" in skeleton:
        return float(skeleton["__float__"])
    raise ValueError(f"unrecognised checkpoint skeleton node {sorted(skeleton)}")


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when initialised) CUDA generator states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_to_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in cuda][: torch.cuda.device_count()])


def _to_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuple(v) for v in value)
    return value
