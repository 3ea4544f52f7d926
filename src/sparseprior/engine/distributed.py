"""Distributed data parallel plumbing on ``torch.distributed``.

Launch with ``torchrun --nproc_per_node=N script.py`` (it sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); the :class:`~sparseprior.engine.Trainer` then
initialises the process group itself (``gloo`` on CPU, ``nccl`` on CUDA). From Python (tests,
notebooks) use :func:`launch`, which spawns ``N`` local processes on ``127.0.0.1``.
"""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sparseprior.common.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and shows progress."""
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (as set by ``torchrun``); defaults 0/1/0."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {err}") from err
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def init_distributed(device: str | torch.device | None = "auto") -> tuple[DistInfo, torch.device]:
    """Initialise the default process group if launched distributed; pick this rank's device.

    Single process (no ``WORLD_SIZE`` > 1 and no initialised group): returns
    ``(DistInfo(), resolve_device(device))``. Distributed: CUDA ranks use ``cuda:LOCAL_RANK``
    and NCCL; CPU ranks use gloo. A group that is already initialised is reused (and left for
    its owner to destroy); one created here is destroyed at interpreter exit.
    """
    dev = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    else:
        info = env_dist_info()
        if not info.distributed:
            return info, dev
        if not dist.is_available():
            raise ValueError("WORLD_SIZE > 1 but torch.distributed is not available")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, init_method="env://", rank=info.rank,
                                world_size=info.world_size)
        atexit.register(cleanup_distributed)
    if dev.type == "cuda" and info.distributed:
        dev = torch.device("cuda", info.local_rank)
    return info, dev


def cleanup_distributed() -> None:
    """Destroy the default process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op single process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm running stats) to every rank."""
    if not is_distributed():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=src)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(rank: int, fn: Callable[..., Any], world_size: int, port: int,
             args: tuple[Any, ...]) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size)})
    try:
        fn(rank, *args)
        # Tear down together: gloo can abort (SIGABRT) when a peer's sockets vanish mid-destroy.
        barrier()
    finally:
        cleanup_distributed()


def launch(fn: Callable[..., Any], world_size: int, args: tuple[Any, ...] = (), *,
           port: int | None = None) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` fresh processes on this machine.

    Each process gets the ``torchrun`` environment (``MASTER_ADDR=127.0.0.1``, a free
    ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), so a
    :class:`~sparseprior.engine.Trainer` created inside ``fn`` runs DDP. ``fn`` must be picklable
    (a module-level function); return results through files. Blocks until all finish and
    re-raises the first failure.
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    port = port or find_free_port()
    mp.spawn(_spawned, args=(fn, world_size, port, tuple(args)), nprocs=world_size, join=True)
