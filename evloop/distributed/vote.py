"""Ranks agree at every step boundary: a stop asked on one rank (``recipe.stop()``,
``EarlyStopping`` on a rank's own values, Ctrl-C on rank 0) and the control commands
rank 0's server received (pause, set lr…) take effect on every rank at the same step.

Each step every rank contributes its stop flag, and rank 0 whether commands arrived,
to a two-number all-reduce on a group of its own, launched without waiting and read
one step later (by then it is long done): the training thread never waits for it.
Commands are then broadcast from rank 0 — only on the steps that have some. At an
epoch's end the vote is settled at once, since ranks may stop there too. While
paused, ranks exchange rank 0's new commands every 0.2 s until one resumes or stops.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

from . import waiting_for

__all__ = ["StepVote"]

VOTE_TIMEOUT = datetime.timedelta(minutes=5)


class StepVote:
    """Every rank's stop flags and rank 0's commands, agreed on step by step (create
    it on every rank, at the same point)."""

    def __init__(self) -> None:
        group = dist.new_group(backend="gloo", timeout=VOTE_TIMEOUT)
        assert isinstance(group, dist.ProcessGroup)  # every rank is a member
        self._group = group
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._outgoing: list[Any] = []  # rank 0's commands, sent at the next boundary

    def step(self, stop_here: bool, commands: list[Any]) -> tuple[bool, list[Any]]:
        """At a step boundary: whether some rank asked to stop by the previous one,
        and the commands rank 0 had then. ``stop_here`` and ``commands`` (rank 0's,
        newly arrived; [] elsewhere) count at the next boundary."""
        agreed = self._read()
        self._launch(stop_here, commands)
        return agreed

    def settle(self, stop_here: bool, commands: list[Any]) -> tuple[bool, list[Any]]:
        """At an epoch's end or a run's: what every rank has asked for, by now."""
        stopped, earlier = self._read()
        self._launch(stop_here, commands)
        stopped_now, now = self._read()
        return stopped or stopped_now, earlier + now

    def gather(self, value: Any) -> list[Any]:
        """``value`` from every rank, in rank order (every rank at once: a run's start)."""
        gathered: list[Any] = [None] * dist.get_world_size(self._group)
        with waiting_for("the ranks compared their callbacks at the run's start"):
            dist.all_gather_object(gathered, value, group=self._group)
        return gathered

    def exchange(self, commands: list[Any]) -> list[Any]:
        """While paused (every rank at once): rank 0's new commands, on every rank."""
        return self._broadcast(commands)

    def _launch(self, stop_here: bool, commands: list[Any]) -> None:
        self._outgoing = commands
        flags = torch.tensor([int(stop_here), int(bool(commands))], dtype=torch.int32)
        work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flags)

    def _read(self) -> tuple[bool, list[Any]]:
        if self._pending is None:
            return False, []
        work, flags = self._pending
        self._pending = None
        with waiting_for("the ranks' vote at a step boundary (stops and commands)"):
            work.wait()
        stop, has_commands = (bool(v) for v in flags.tolist())
        commands = self._broadcast(self._outgoing) if has_commands else []
        self._outgoing = []
        return stop, commands

    def _broadcast(self, commands: list[Any]) -> list[Any]:
        box = [commands if dist.get_rank() == 0 else None]
        with waiting_for("rank 0's commands at a step boundary"):
            dist.broadcast_object_list(box, src=0, group=self._group)
        return list(box[0] or [])
