"""Input checks at the API boundary; each error names the argument, the value and the fix."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def as_float_tensor(value: Any, name: str, *, ndim: int | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert numpy/torch/list input to a floating tensor, checking rank and finiteness."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a numpy array or torch tensor, "
                            f"got {type(value).__name__}") from err
    if value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got dtype {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(value.shape)}")
    value = value.to(dtype) if value.dtype != dtype else value
    check_finite(value, name)
    return value


def check_finite(t: torch.Tensor, name: str) -> None:
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); clean the input first")


def check_range(value: float, name: str, low: float | None = None, high: float | None = None,
                *, low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    """Check ``low <= value <= high`` (bounds optional, inclusiveness configurable).

    NaN and inf are always refused: every configurable number must be finite."""
    try:
        finite = math.isfinite(value)
    except TypeError:
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}") from None
    if not finite:
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'[' if low_inclusive else '('}{lo}, {hi}{']' if high_inclusive else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_positive_int(value: Any, name: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_choice(value: str, name: str, choices: Any) -> str:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")
    return value
