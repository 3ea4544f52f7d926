"""Seeds: every random thing takes a seed or a ``torch.Generator``."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(seed: int | torch.Generator | None, device: str | torch.device = "cpu"
                   ) -> torch.Generator:
    """Return a generator seeded with ``seed`` (or ``seed`` itself when it already is one)."""
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator(device=device)
    gen.manual_seed(0 if seed is None else int(seed))
    return gen
