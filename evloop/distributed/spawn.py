"""Processes spawned by Torchélie's ``parallel_run``, each joined to one group."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import DEFAULT_TIMEOUT

__all__ = ["spawn"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(
    rank: int,
    fun: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    world_size: int,
    port: int,
    result_file: str,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=rank, world_size=world_size, timeout=DEFAULT_TIMEOUT
    )
    try:
        out = fun(*args, **kwargs, rank=rank, world_size=world_size)
        if rank == 0:
            torch.save(out, result_file)
    finally:
        dist.destroy_process_group()


def spawn(
    fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], n: int | None
) -> Any:
    """Runs ``fun`` in ``n`` processes; returns rank 0's result (saved with
    ``torch.save``: tensors, numbers, containers of them)."""
    world_size = n if n is not None else max(torch.cuda.device_count(), 2)
    with tempfile.TemporaryDirectory() as folder:
        result_file = os.path.join(folder, "rank0.pt")
        mp.spawn(
            _run,
            args=(fun, args, kwargs, world_size, _free_port(), result_file),
            nprocs=world_size,
            join=True,
        )
        if not os.path.exists(result_file):
            return None
        return torch.load(result_file, map_location="cpu", weights_only=False)
