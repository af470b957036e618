"""Timing the parts of sampled steps for ``StepBreakdown``, without host syncs.

A sampled step is marked at each change of part: the step's boundary (before the
loader is asked for a batch), then the end of the data part, of each callback hook,
of the forward function, of the engine's own work. On the CPU a mark is the monotonic
clock; on CUDA a recorded event, read once the step's last one completed (``query``,
never a wait). Steps that are not sampled run the loop's plain handlers: no mark.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["StepTimer", "Sample", "PARTS"]

PARTS = ("data", "forward", "optimizer", "callbacks", "engine")
Handler = Callable[[dict[str, Any]], Any]
Sample = tuple[int, list[tuple[str, float]]]  # an iteration and its (label, seconds)


class StepTimer:
    """Marks one step in ``every`` (every step while ``forced``); ``done`` holds the
    measured steps, oldest first, until taken."""

    def __init__(self, every: int, cuda: bool) -> None:
        self.every = every
        self.cuda = cuda
        self.forced = False
        self.sampling = False
        self.done: collections.deque[Sample] = collections.deque(maxlen=1000)
        self._marks: list[tuple[str, Any]] = []
        self._iters = 0
        self._pauses = 0
        self._pending: collections.deque[tuple[int, list[tuple[str, Any]]]] = collections.deque()

    # -- marking ----------------------------------------------------------------------
    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def mark(self, label: str) -> None:
        """The part ``label`` ended now (it began at the previous mark)."""
        self._marks.append((label, self._now()))

    def boundary(self, next_iters: int, pauses: int = 0) -> None:
        """Between two steps: close the sampled step (unless the run paused in it:
        ``pauses`` counts the pauses so far), decide on the next."""
        if self.sampling and pauses != self._pauses:
            self.cancel()
        self._pauses = pauses
        if self.sampling:
            self.mark("engine")
            self._pending.append((self._iters, self._marks))
            self._marks = []
        self._read()
        self.sampling = self.forced or next_iters % self.every == 0
        if self.sampling:
            self._iters = next_iters
            self._marks = [("", self._now())]

    def cancel(self) -> None:
        """Forget the step under way (a pause in it is no part of a step)."""
        self.sampling = False
        self._marks = []

    def batches(
        self, batches: Iterator[Any], iters: Callable[[], int], pauses: Callable[[], int]
    ) -> Iterator[Any]:
        """``batches`` with a boundary before each is asked for (and after the last)."""
        while True:
            self.boundary(iters() + 1, pauses())
            batch = next(batches, _END)
            if batch is _END:
                self.cancel()
                return
            yield batch

    # -- reading ----------------------------------------------------------------------
    def _read(self, wait: bool = False) -> None:
        """Turn marked steps into durations, the CUDA ones once their events completed
        (``wait``: synchronize first, for a profile's end)."""
        while self._pending:
            iters, marks = self._pending[0]
            if self.cuda and not wait and not marks[-1][1].query():
                return
            self._pending.popleft()
            self.done.append((iters, _durations(marks, self.cuda)))

    def flush(self) -> None:
        """Read every marked step now (CUDA: waits for the device)."""
        if self.cuda and self._pending:
            self._pending[-1][1][-1][1].synchronize()
        self._read(wait=True)

    # -- the loop's handlers ----------------------------------------------------------
    def wrap(
        self,
        callbacks: list[Any],
        hooks: tuple[tuple[Handler, ...], tuple[Handler, ...], tuple[Handler, ...]],
        call_fun: Callable[..., Any],
        optimizers: tuple[type, ...],
    ) -> tuple[tuple[Handler, ...], tuple[Handler, ...], tuple[Handler, ...], Callable[..., Any]]:
        """The batch start, end and done handlers and the forward function of a
        sampled step: each followed by its mark (``optimizer`` for an ``Optimizer``'s
        hooks, ``callbacks/<name>`` for the others'), the data part closed before the
        first, the engine's work between them marked ``engine``."""
        names = _names(callbacks, optimizers)
        start, end, done = (tuple(self._timed(h, names) for h in hs) for hs in hooks)

        def closes(label: str) -> Handler:
            return lambda state: self.mark(label)

        def forward(*args: Any, **kwargs: Any) -> Any:
            self.mark("engine")
            out = call_fun(*args, **kwargs)
            self.mark("forward")
            return out

        return (closes("data"), *start), end, (closes("engine"), *done), forward

    def _timed(self, handler: Handler, names: dict[int, str]) -> Handler:
        owner = getattr(handler, "__self__", None)
        label = names.get(id(owner), f"callbacks/{getattr(handler, '__qualname__', handler)}")

        def timed(state: dict[str, Any]) -> Any:
            result = handler(state)
            self.mark(label)
            return result

        return timed


_END = object()


def _names(callbacks: list[Any], optimizers: tuple[type, ...]) -> dict[int, str]:
    """Each callback's label by id: ``optimizer``, or ``callbacks/<class name>`` (``#2``
    for the second of a class)."""
    names: dict[int, str] = {}
    seen: collections.Counter[str] = collections.Counter()
    for callback in callbacks:
        if isinstance(callback, optimizers):
            names[id(callback)] = "optimizer"
            continue
        base = getattr(callback, "name", None)
        base = base if isinstance(base, str) else type(callback).__name__
        seen[base] += 1
        count = seen[base]
        names[id(callback)] = f"callbacks/{base}" + (f"#{count}" if count > 1 else "")
    return names


def _durations(marks: list[tuple[str, Any]], cuda: bool) -> list[tuple[str, float]]:
    out = []
    for (_, before), (label, after) in zip(marks, marks[1:], strict=False):
        seconds = before.elapsed_time(after) / 1e3 if cuda else after - before
        out.append((label, max(seconds, 0.0)))
    return out
