"""Throughput: iteration and forward timings, without syncing the device."""

from __future__ import annotations

import collections
import time
from typing import Any

from ..distributed import world

__all__ = ["Throughput"]


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list | tuple) and batch else batch
    try:
        return len(first)
    except TypeError:
        return 1


class Throughput:
    """Posts ``iter_time``/``iter_throughput`` (mean over the last 100 steps, from one
    batch start to the next) and ``forward_time``/``forward_throughput`` (last 10, from
    batch start to this callback's batch end). Throughputs are in samples per second
    over all ranks of a data-parallel run: ``world_size`` defaults to its number of
    processes (every rank steps in lockstep with batches of the same size).
    """

    def __init__(self, world_size: int | None = None) -> None:
        self.world_size = world().size if world_size is None else world_size
        self.iter_times: collections.deque[float] = collections.deque(maxlen=100)
        self.forward_times: collections.deque[float] = collections.deque(maxlen=10)
        self.last_start: float | None = None

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        self.last_start = None  # the pause between epochs is not an iteration

    def on_batch_start(self, state: dict[str, Any]) -> None:
        now = time.perf_counter()
        if self.last_start is not None:
            self.iter_times.append(now - self.last_start)
        self.last_start = now

    def on_batch_end(self, state: dict[str, Any]) -> None:
        assert self.last_start is not None
        self.forward_times.append(time.perf_counter() - self.last_start)
        samples = _batch_size(state.get("batch")) * self.world_size
        metrics = state["metrics"]
        if self.iter_times:
            iter_time = sum(self.iter_times) / len(self.iter_times)
            metrics["iter_time"] = iter_time
            metrics["iter_throughput"] = samples / iter_time
        forward_time = sum(self.forward_times) / len(self.forward_times)
        metrics["forward_time"] = forward_time
        metrics["forward_throughput"] = samples / forward_time
