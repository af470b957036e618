"""A stop asked on one rank (``recipe.stop()``, a control command, Ctrl-C on rank 0)
ends every rank at the same step boundary.

Each step every rank contributes its own stop flag to a small all-reduce on a group of
its own, launched without waiting and read one step later (by then it is long done):
the training thread never waits for it. All ranks read the same result at the same
boundary, so they stop together and no collective is left waiting for a rank that
left. At an epoch's end the vote is settled at once, since ranks may stop there too.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["StopVote"]

VOTE_TIMEOUT = datetime.timedelta(minutes=5)


class StopVote:
    """Every rank's stop flags, agreed on step by step (create it on every rank)."""

    def __init__(self) -> None:
        group = dist.new_group(backend="gloo", timeout=VOTE_TIMEOUT)
        assert isinstance(group, dist.ProcessGroup)  # every rank is a member
        self._group = group
        self._pending: tuple[Any, torch.Tensor] | None = None

    def step(self, stop_here: bool) -> bool:
        """At a step boundary: whether some rank asked to stop by the previous one;
        ``stop_here`` is this rank's flag now, counted at the next boundary."""
        agreed = self._read()
        flag = torch.tensor([int(stop_here)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flag)
        return agreed

    def settle(self, stop_here: bool) -> bool:
        """At an epoch's end or a run's: whether any rank has asked to stop, by now."""
        agreed = self._read()
        flag = torch.tensor([int(stop_here)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return agreed or bool(flag.item())

    def _read(self) -> bool:
        if self._pending is None:
            return False
        work, flag = self._pending
        self._pending = None
        work.wait()
        return bool(flag.item())
