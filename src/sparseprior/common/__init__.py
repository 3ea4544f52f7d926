"""Shared plumbing: configs, validation, devices, checkpoints, run folders, progress."""

from sparseprior.common.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    load_safetensors_checkpoint,
    save_safetensors_checkpoint,
)
from sparseprior.common.config import Config
from sparseprior.common.device import resolve_device
from sparseprior.common.progress import progress_bar
from sparseprior.common.runs import RunDir
from sparseprior.common.seeding import make_generator, seed_everything

__all__ = [
    "Config",
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_safetensors_checkpoint",
    "make_generator",
    "progress_bar",
    "resolve_device",
    "save_safetensors_checkpoint",
    "seed_everything",
]
