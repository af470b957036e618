"""Data-parallel runs with ``torch.distributed``, launched by ``torchrun``.

evloop does not launch processes: ``torchrun --nproc_per_node N script.py`` does,
and :meth:`evloop.Recipe.distributed` (or :func:`init_from_env`) joins the process
group it describes (gloo on CPU, NCCL on GPU). Then:

* registered modules are wrapped in ``DistributedDataParallel`` at the start of a run
  (the forward function must call the wrapper: take the model by name);
* metric averages are averaged over ranks, so what is logged is the global value;
* events reach subscribers (loggers, dashboard) on rank 0 only, and only rank 0
  writes checkpoints, which hold every rank's RNG state for an exact resume;
* ``Throughput`` counts the samples of every rank.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "World",
    "world",
    "init_from_env",
    "sampler",
    "all_gather_objects",
    "barrier",
    "average_over_ranks",
    "publishes_here",
    "lost_peer",
    "PeerLost",
    "waiting_for",
]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class World:
    """Where this process stands in the run: ``rank`` out of ``size`` processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The process group's view when one is initialised, else what ``torchrun``'s
    environment says (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), else a single process."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local_rank)
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local_rank)


def publishes_here(all_ranks: bool = False) -> bool:
    """Whether this process publishes events: always, except on ranks other than 0 of
    a distributed run unless ``all_ranks``."""
    here = world()
    return not here.distributed or here.is_main or all_ranks


def init_from_env(
    backend: str | None = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT
) -> World:
    """Join the process group ``torchrun`` describes, once; a no-op in a single process
    or when the group already exists.

    The backend is NCCL when CUDA is available (each process then uses the GPU of its
    ``LOCAL_RANK``), else gloo. ``timeout`` bounds how long a collective waits for a
    rank that stopped answering.
    """
    here = world()
    if not here.distributed or dist.is_initialized():
        return here
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError(
            f"WORLD_SIZE={here.size} but MASTER_ADDR is not set: launch with "
            "`torchrun --nproc_per_node N script.py` (or set the torch.distributed "
            "environment variables yourself)"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(here.local_rank)
    store = _attempt_store(timeout)
    if store is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(
            backend, store=store, rank=here.rank, world_size=here.size, timeout=timeout
        )
    atexit.register(_leave_group)
    return world()


def _attempt_store(timeout: datetime.timedelta) -> Any:
    """Under one ``torchrun`` agent, its store under a prefix of this attempt's own.

    The agent's store outlives the workers it restarts (``--max-restarts``), and
    c10d names process groups by a count that starts again in each attempt: a rank
    that creates a group before the other ranks of its attempt wrote their addresses
    would read the previous attempt's, and fail to connect. The agent numbers its
    attempts (``TORCHELASTIC_RESTART_COUNT``); on several nodes the agents' counts may
    differ (a node that joined later), so there the agent's store is used as it is.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if env.get("LOCAL_WORLD_SIZE") != env.get("WORLD_SIZE") or "MASTER_PORT" not in env:
        return None
    client = dist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"evloop/{env.get('TORCHELASTIC_RUN_ID', '')}/{attempt}/", client)


def _leave_group() -> None:
    """At exit, end the group this process joined (and the groups made from it), so
    that their communication threads stop before the interpreter tears down: left
    alone, one may be destroyed while still joinable, which aborts the process."""
    if dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()  # groups held in reference cycles (meshes, votes) go now too


def sampler(dataset: Any, *, shuffle: bool = True, seed: int = 0, **options: Any) -> Any:
    """A ``DistributedSampler`` over this process's share of ``dataset``, usable before
    the process group exists and in a single process (where it is the whole data set):
    ``DataLoader(data, batch_size=…, sampler=evloop.distributed.sampler(data))``.
    """
    here = world()
    return torch.utils.data.DistributedSampler(
        dataset, num_replicas=here.size, rank=here.rank, shuffle=shuffle, seed=seed, **options
    )


def all_gather_objects(value: Any) -> list[Any]:
    """``value`` from every rank, in rank order (a collective: every rank calls it)."""
    if not world().distributed or not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    with waiting_for("gathering every rank's state (a checkpoint's RNG states)"):
        dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait until every rank is here (a collective: every rank calls it)."""
    if world().distributed and dist.is_initialized():
        with waiting_for("waiting for rank 0's checkpoint files at the run's end"):
            dist.barrier()


def average_over_ranks(value: Any) -> Any:
    """The mean of a tensor or number over ranks (a collective), as a new tensor on the
    value's device; ``value`` itself when not distributed or not a number.

    NCCL reduces on the GPU without a host sync. Each rank counts equally: with a
    ``DistributedSampler`` every rank sees the same number of batches.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    if isinstance(value, bool) or not isinstance(value, torch.Tensor | int | float):
        return value
    nccl = dist.get_backend() == "nccl"  # reduces CUDA tensors only
    if isinstance(value, torch.Tensor):
        reduced = value.detach().clone() if value.is_floating_point() else value.float()
        if nccl and not reduced.is_cuda:
            reduced = reduced.to(torch.cuda.current_device())
    else:
        reduced = torch.tensor(float(value), device="cuda" if nccl else "cpu")
    with waiting_for("averaging an epoch's metric over ranks"):
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.div_(dist.get_world_size())


class PeerLost(RuntimeError):
    """A collective failed because another rank stopped answering."""


_TRANSPORT_FAILURES = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "Connection refused",
    "Timed out waiting",
    "NCCL communicator was aborted",
)


def lost_peer(error: BaseException) -> PeerLost | None:
    """``error`` said plainly when it is a collective that failed because another rank
    or node went away (crashed, killed, out of memory); None otherwise."""
    here = world()
    if not here.distributed:
        return None
    text = str(error)
    transport = isinstance(error, dist.DistError) or any(f in text for f in _TRANSPORT_FAILURES)
    if not transport:
        return None
    waited = [n for n in getattr(error, "__notes__", ()) if n.startswith("while ")]
    during = waited[0] if waited else "during a collective"
    return PeerLost(
        f"rank {here.rank} of {here.size}: another rank stopped answering {during} — it "
        f"crashed, was killed, hung, or its node went down; its own log (or torchrun's "
        f"summary) says why. Here: {text.splitlines()[0] if text else error!r}"
    )


@contextlib.contextmanager
def waiting_for(what: str) -> Iterator[None]:
    """Name what a collective inside waits for: its failure (a rank lost, the group's
    timeout) then says so (``while averaging 'loss' over ranks``)."""
    try:
        yield
    except Exception as error:
        error.add_note(f"while {what}")
        raise
