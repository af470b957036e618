"""Event-loop lag: how late a task that sleeps 1 ms in a loop wakes up.

Used by the benchmark and the tests to show that training with ``arun`` leaves the
app's event loop responsive.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["LagProbe"]


class LagProbe:
    """``async with LagProbe() as probe: ...`` then ``probe.percentile(99)`` (ms)."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lateness_ms: list[float] = []
        self._group: anyio.abc.TaskGroup | None = None

    async def _tick(self) -> None:
        while True:
            start = time.perf_counter()
            await anyio.sleep(self.interval)
            self.lateness_ms.append((time.perf_counter() - start - self.interval) * 1e3)

    async def __aenter__(self) -> LagProbe:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._tick)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._group is not None
        self._group.cancel_scope.cancel()
        await self._group.__aexit__(None, None, None)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.lateness_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]
