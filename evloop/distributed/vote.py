"""Ranks agree at step boundaries: a stop asked on one rank (``recipe.stop()``,
``EarlyStopping`` on a rank's own values, Ctrl-C or a preemption signal) and the
control commands rank 0's server received (pause, set lr…) take effect on every rank
at the same step.

Every rank contributes its stop flag, rank 0 whether commands arrived, and each rank
how many steps it would like between votes, to a three-number all-reduce on a group
of its own, launched without waiting and read at the next vote (by then it is long
done): the training thread never waits for it. Commands are then broadcast from
rank 0 — only on the votes that have some. A vote is held every step while steps are
slow, and about every :data:`VOTE_EVERY_S` seconds of steps when they are fast (at
most :data:`MAX_STEPS_BETWEEN` steps apart), so that a job of short steps does not pay
an all-reduce per step; how far apart is itself agreed, so every rank votes at the
same boundaries. At an epoch's end the vote is settled at once, since ranks may stop
there too. While paused, ranks exchange rank 0's new commands every 0.2 s until one
resumes or stops.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import torch
import torch.distributed as dist

from . import waiting_for

__all__ = ["StepVote", "STOP", "PREEMPTED", "VOTE_EVERY_S", "MAX_STEPS_BETWEEN"]

VOTE_TIMEOUT = datetime.timedelta(minutes=5)
VOTE_EVERY_S = 0.5
"""About how often ranks vote when steps are shorter than this."""
MAX_STEPS_BETWEEN = 64
STOP, PREEMPTED = 1, 2
"""What a rank asks for (the larger wins): a stop, or a stop for a preemption."""


class StepVote:
    """Every rank's stop flags and rank 0's commands, agreed on at step boundaries
    (create it on every rank, at the same point)."""

    def __init__(self, every_s: float = VOTE_EVERY_S) -> None:
        group = dist.new_group(backend="gloo", timeout=VOTE_TIMEOUT)
        assert isinstance(group, dist.ProcessGroup)  # every rank is a member
        self._group = group
        self.every_s = every_s
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._outgoing: list[Any] = []  # rank 0's commands, sent with the pending vote
        self._held: list[Any] = []  # rank 0's commands waiting for the next vote
        self._boundaries = 0  # step boundaries seen
        self._next = 1  # the boundary of the next vote
        self._apart = 1  # steps between votes, as agreed
        self._mark = (time.monotonic(), 0)  # the last vote: when, at which boundary

    @property
    def group(self) -> dist.ProcessGroup:
        """The votes' own process group."""
        return self._group

    def step(self, stop_here: int, commands: list[Any]) -> tuple[int, list[Any]]:
        """At a step boundary: what some rank asked for by the previous vote (0, or
        :data:`STOP` / :data:`PREEMPTED`) and the commands rank 0 had then, on the
        boundaries where ranks vote; ``(0, [])`` on the others. ``stop_here`` and
        ``commands`` (rank 0's, newly arrived; [] elsewhere) count at the next vote."""
        self._boundaries += 1
        if commands:
            self._held += commands
        if self._boundaries < self._next:
            return 0, []
        agreed = self._read()
        self._launch(stop_here)
        self._next = self._boundaries + self._apart
        return agreed

    def settle(self, stop_here: int, commands: list[Any]) -> tuple[int, list[Any]]:
        """At an epoch's end or a run's: what every rank has asked for, by now."""
        self._held += commands
        stopped, earlier = self._read()
        self._launch(stop_here)
        stopped_now, now = self._read()
        self._next = self._boundaries + 1
        self._mark = (time.monotonic(), self._boundaries)
        return max(stopped, stopped_now), earlier + now

    def gather(self, value: Any) -> list[Any]:
        """``value`` from every rank, in rank order (every rank at once: a run's start)."""
        gathered: list[Any] = [None] * dist.get_world_size(self._group)
        with waiting_for("the ranks compared their callbacks at the run's start"):
            dist.all_gather_object(gathered, value, group=self._group)
        return gathered

    def exchange(self, commands: list[Any]) -> list[Any]:
        """While paused (every rank at once): rank 0's new commands, on every rank."""
        return self._broadcast(commands)

    def _launch(self, stop_here: int) -> None:
        self._outgoing, self._held = self._held, []
        wished = self._steps_wished()
        flags = torch.tensor(
            [int(stop_here), int(bool(self._outgoing)), -wished], dtype=torch.int32
        )
        work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flags)

    def _steps_wished(self) -> int:
        """How many steps this rank would have between votes: about ``every_s`` of its
        recent steps (all ranks take the fewest wished)."""
        now, boundaries = time.monotonic(), self._boundaries
        then, before = self._mark
        self._mark = (now, boundaries)
        if boundaries <= before:
            return 1
        step_s = (now - then) / (boundaries - before)
        if step_s <= 0:
            return MAX_STEPS_BETWEEN
        return max(1, min(MAX_STEPS_BETWEEN, int(self.every_s / step_s)))

    def _read(self) -> tuple[int, list[Any]]:
        if self._pending is None:
            return 0, []
        work, flags = self._pending
        self._pending = None
        with waiting_for("the ranks' vote at a step boundary (stops and commands)"):
            work.wait()
        stop, has_commands, apart = flags.tolist()
        self._apart = max(1, -apart)
        commands = self._broadcast(self._outgoing) if has_commands else []
        self._outgoing = []
        return stop, commands

    def _broadcast(self, commands: list[Any]) -> list[Any]:
        box = [commands if dist.get_rank() == 0 else None]
        with waiting_for("rank 0's commands at a step boundary"):
            dist.broadcast_object_list(box, src=0, group=self._group)
        return list(box[0] or [])
