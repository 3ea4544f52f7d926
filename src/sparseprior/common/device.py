"""Device selection: CUDA when present, CPU always."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None``/``"cpu"``/``"cuda[:i]"`` into a ``torch.device``.

    ``"auto"`` picks CUDA when available, else CPU. Asking for CUDA on a machine without it is
    a ``ValueError`` rather than a late crash.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device={device!r} is not a valid device; use 'auto', 'cpu' or 'cuda[:index]'"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use 'cpu'")
    return dev
