"""Optimizer and per-step learning-rate schedule built from a :class:`TrainConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from sparseprior.engine.config import TrainConfig

_FUSED_DEVICES = frozenset({"cpu", "cuda"})


def fused_option(params: Iterable[nn.Parameter]) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is a floating-point tensor on the CPU or CUDA,
    else ``{}`` (PyTorch's default implementation).

    On the CPU PyTorch defaults to a per-tensor Python loop: an AdamW step over MiniLM's 22.6M
    parameters takes 0.31 s there and 0.035 s fused (one thread), ~10% of a training step.
    Fused and loop updates agree to float rounding (~1e-7), not bit for bit.
    """
    params = list(params)
    ok = bool(params) and all(
        p.device.type in _FUSED_DEVICES and p.is_floating_point() and not p.is_sparse
        for p in params)
    return {"fused": True} if ok else {}


def build_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW with ``config.weight_decay``; the fused
    implementation where PyTorch has one (:func:`fused_option`)."""
    params = list(params)
    fused = fused_option(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov,
                               **fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)


def lr_factor_fn(config: TrainConfig, steps_per_epoch: int, total_steps: int
                 ) -> Callable[[int], float]:
    """``step -> lr / config.lr``: linear warm-up, then constant, cosine or step decay.

    ``total_steps`` is where cosine reaches 0; milestones and warm-up are in epochs, converted
    with ``steps_per_epoch``.
    """
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    milestones = [m * steps_per_epoch for m in config.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "cosine":
            span = max(1, total_steps - warmup)
            progress = min(1.0, (step - warmup) / span)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.lr_schedule == "step":
            return config.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor_fn(config, steps_per_epoch, total_steps))
