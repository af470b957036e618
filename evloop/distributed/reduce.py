"""Per-batch metric means over ranks, reduced together and only when published.

An averager's per-batch value is posted locally at once; the run's :class:`RankMeans`
collects every value posted during the step and, every ``every`` steps (the same steps
on every rank), averages them all in one all-reduce of one flat buffer — never one
collective per averager per step. Only those steps' ``BatchEnded`` events are
published, so what subscribers see is always the mean over ranks. Epoch means are
reduced at once, at the epoch's end (one small collective per averager per epoch).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .. import context
from . import waiting_for

__all__ = ["RankMeans", "post_rank_mean", "REDUCE_EVERY"]

REDUCE_EVERY = 10


class RankMeans:
    """The values of one run's step waiting to be averaged over ranks."""

    def __init__(self, every: int = REDUCE_EVERY) -> None:
        if every < 1:
            raise ValueError(f"reduce_every must be at least 1, got {every}")
        self.every = every
        self.pending: dict[str, Any] = {}
        self.fresh = False
        """Whether the metrics hold this step's means over ranks (events may go out)."""

    def due(self, iters: int) -> bool:
        """The steps a subscriber filtering every-N sees too (``iters % N == 0``)."""
        return iters % self.every == 0

    def reduce(self, metrics: dict[str, Any], iters: int) -> None:
        """At a step's end, on every rank: average what was posted, when the step is
        due; otherwise forget it (the metrics keep this rank's own values)."""
        pending, self.pending = self.pending, {}
        self.fresh = self.due(iters)
        if not self.fresh or not pending:
            return
        names = list(pending)
        values = [_as_tensor(pending[n]) for n in names]
        device = (
            torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
        )
        flat = torch.cat([v.detach().reshape(-1).to(device, torch.float32) for v in values])
        with waiting_for(f"averaging this step's {', '.join(names)} over ranks"):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(dist.get_world_size())
        offset = 0
        for name, value in zip(names, values, strict=True):
            size = value.numel()
            mean = flat[offset : offset + size].reshape(value.shape)
            metrics[name] = mean.to(value.device) if value.is_floating_point() else mean
            offset += size


def post_rank_mean(metrics: dict[str, Any], name: str, value: Any) -> None:
    """Post ``metrics[name] = value`` (this rank's), to be averaged over ranks with the
    step's other values when the step is published (in a distributed run)."""
    metrics[name] = value
    run = context.current_or_none()
    if run is not None and run.means is not None and _averageable(value):
        run.means.pending[name] = value


def _averageable(value: Any) -> bool:
    return isinstance(value, torch.Tensor | int | float) and not isinstance(value, bool)


def _as_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.tensor(float(value))


def _nccl() -> bool:
    return dist.get_backend() == "nccl"
