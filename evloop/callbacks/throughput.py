"""Throughput: iteration and forward timings, without syncing the device."""

from __future__ import annotations

import collections
import time
from typing import Any

import torch

from ..distributed import world

__all__ = ["Throughput"]


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list | tuple) and batch else batch
    try:
        return len(first)
    except TypeError:
        return 1


def _on_cuda(batch: Any) -> bool:
    first = batch[0] if isinstance(batch, list | tuple) and batch else batch
    return isinstance(first, torch.Tensor) and first.is_cuda


class Throughput:
    """Posts ``iter_time``/``iter_throughput`` (mean over the last 100 steps, from one
    batch start to the next) and ``forward_time``/``forward_throughput`` (last 10, from
    batch start to this callback's batch end). Throughputs are in samples per second
    over all ranks of a data-parallel run: ``world_size`` defaults to its number of
    processes (every rank steps in lockstep with batches of the same size).

    On CUDA the times are the device's, measured with CUDA events read once they
    have completed (a few steps later, never waiting): wall-clock time on the host
    would measure kernel launches, not the work. On the CPU, wall-clock time.
    """

    def __init__(self, world_size: int | None = None) -> None:
        self.world_size = world().size if world_size is None else world_size
        self.iter_times: collections.deque[float] = collections.deque(maxlen=100)
        self.forward_times: collections.deque[float] = collections.deque(maxlen=10)
        self.last_start: float | None = None
        self._cuda = False
        self._started: Any = None  # this step's start event (CUDA)
        self._pending: collections.deque[tuple[Any, Any, Any]] = collections.deque()

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        self.last_start = None  # the pause between epochs is not an iteration
        self._pending.clear()

    def on_batch_start(self, state: dict[str, Any]) -> None:
        self._cuda = _on_cuda(state.get("_batch_gpu"))
        if self._cuda:
            self._started = torch.cuda.Event(enable_timing=True)
            self._started.record()
            return
        now = time.perf_counter()
        if self.last_start is not None:
            self.iter_times.append(now - self.last_start)
        self.last_start = now

    def on_batch_end(self, state: dict[str, Any]) -> None:
        if self._cuda:
            self._device_times()
        else:
            assert self.last_start is not None
            self.forward_times.append(time.perf_counter() - self.last_start)
        if not self.forward_times:
            return  # on CUDA, until the first step completed
        samples = _batch_size(state.get("batch")) * self.world_size
        metrics = state["metrics"]
        if self.iter_times:
            iter_time = sum(self.iter_times) / len(self.iter_times)
            metrics["iter_time"] = iter_time
            metrics["iter_throughput"] = samples / iter_time
        forward_time = sum(self.forward_times) / len(self.forward_times)
        metrics["forward_time"] = forward_time
        metrics["forward_throughput"] = samples / forward_time

    def _device_times(self) -> None:
        """Record this step's end; read the steps whose events completed."""
        ended = torch.cuda.Event(enable_timing=True)
        ended.record()
        previous = self._pending[-1][0] if self._pending else None
        self._pending.append((self._started, ended, previous))
        while self._pending and self._pending[0][1].query():
            started, ended, previous = self._pending.popleft()
            self.forward_times.append(started.elapsed_time(ended) / 1e3)
            if previous is not None:
                self.iter_times.append(previous.elapsed_time(started) / 1e3)
