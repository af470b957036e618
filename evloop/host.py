"""Host copies of device tensors, made without a host<->device sync.

The training thread publishes events that hold device tensors and never waits for
them. Whoever needs the numbers (a logger, the websocket server, a checkpoint writer)
launches a :class:`HostCopy`: each CUDA tensor is copied into pinned host memory with
``non_blocking=True`` on the caller's current stream, and a CUDA event recorded after
the copies says when they have landed. The caller then waits for that event by
polling it from a coroutine (:meth:`HostCopy.wait_async`, the event loop stays free)
or in its own thread (:meth:`HostCopy.wait`) — never with a stream or device
synchronisation, so ``torch.cuda.set_sync_debug_mode('error')`` stays quiet.

The copies are ordered after the work that produced the tensors when both run on the
same stream: the training thread and the consumers use the default stream; an
evaluation on a stream of its own makes its copies on that stream.
"""

from __future__ import annotations

import collections
import copy
import threading
from collections.abc import Iterable
from typing import Any

import anyio
import msgspec
import torch

from .reports import Report

__all__ = ["HostCopy", "EventCopies", "DeferredReads"]

FIRST_POLL, LAST_POLL = 0.0002, 0.005  # seconds: back off while the GPU catches up


class HostCopy:
    """Launches host copies of every CUDA tensor inside ``value`` (dicts, lists,
    tuples, :class:`~evloop.reports.Report` arguments); read :attr:`value` after
    :meth:`wait` or :meth:`wait_async`.

    Containers without a CUDA tensor are returned as they are (the same object), so
    ``copy.value is value`` tells that nothing needed copying. With ``clone_cpu``,
    CPU tensors are cloned and containers rebuilt too (a snapshot the caller may keep
    while training goes on changing the originals).
    """

    def __init__(self, value: Any, *, clone_cpu: bool = False) -> None:
        self._clone_cpu = clone_cpu
        self._devices: set[torch.device] = set()
        self.source = value
        self.value = self._copy(value)
        self._events = [self._record(device) for device in self._devices]

    @staticmethod
    def _record(device: torch.device) -> Any:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        return event

    def _copy(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._copy_tensor(value)
        if isinstance(value, dict):
            items = {key: self._copy(item) for key, item in value.items()}
            if self._unchanged(items.values(), value.values()):
                return value
            copied = copy.copy(value)  # keeps OrderedDict, defaultdict's factory
            copied.update(items)
            return copied
        if isinstance(value, list | tuple):
            copies = [self._copy(item) for item in value]
            if self._unchanged(copies, value):
                return value
            if hasattr(value, "_fields"):  # namedtuple
                return type(value)(*copies)
            return type(value)(copies)
        if isinstance(value, Report):
            args = self._copy(value.args)
            return value if args is value.args else value.with_args(*args)
        return value

    def _unchanged(self, copies: Iterable[Any], originals: Iterable[Any]) -> bool:
        """Whether a container can be passed on as it is: nothing inside was copied,
        and this is not a snapshot (which must not share a container with the live
        state)."""
        if self._clone_cpu:
            return False
        return all(new is old for new, old in zip(copies, originals, strict=True))

    def _copy_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_cuda:
            host = torch.empty_like(tensor, device="cpu", pin_memory=True)
            host.copy_(tensor.detach(), non_blocking=True)
            self._devices.add(tensor.device)
            return host
        return tensor.detach().clone() if self._clone_cpu else tensor

    @property
    def pending(self) -> bool:
        """Whether copies were launched (there were CUDA tensors)."""
        return bool(self._events)

    def done(self) -> bool:
        return all(event.query() for event in self._events)

    def wait(self) -> Any:
        """Block this thread (never the device) until the copies landed."""
        for event in self._events:
            event.synchronize()
        return self.value

    async def wait_async(self) -> Any:
        """Wait for the copies without blocking the event loop (polling, each pause
        twice as long as the last, up to 5 ms: few wake-ups when the GPU queue is deep)."""
        delay = FIRST_POLL
        while not self.done():
            await anyio.sleep(delay)
            delay = min(2 * delay, LAST_POLL)
        return self.value


class EventCopies:
    """Host copies of a bus's recent events, shared by its consumers.

    Several subscribers receive the same event: the first one launches the copies,
    the others wait for the same ones. Only the last ``size`` events are remembered
    (with their pinned buffers).
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._copies: collections.OrderedDict[int, tuple[Any, HostCopy | None]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def _launch(self, event: Any) -> HostCopy | None:
        key = id(event)
        with self._lock:
            known = self._copies.get(key)
            if known is not None and known[0] is event:
                return known[1]
        fields = HostCopy({name: getattr(event, name) for name in event.__struct_fields__})
        launched = fields if fields.pending else None
        with self._lock:
            self._copies[key] = (event, launched)
            while len(self._copies) > self.size:
                self._copies.popitem(last=False)
        return launched

    async def to_host(self, events: list[Any]) -> list[Any]:
        """``events`` with the CUDA tensors of their fields replaced by host copies
        (an event holding none is passed on as it is)."""
        if not torch.cuda.is_initialized():  # no CUDA tensor can exist: nothing to look at
            return events
        copies = [self._launch(event) for event in events]
        converted = []
        for event, fields in zip(events, copies, strict=True):
            if fields is None:
                converted.append(event)
                continue
            copied = await fields.wait_async()
            changed = {k: v for k, v in copied.items() if v is not fields.source[k]}
            converted.append(msgspec.structs.replace(event, **changed))
        return converted


class DeferredReads:
    """Numbers read from the device without waiting for it: :meth:`read` launches a
    host copy and calls ``then(number)`` once it landed, from a later :meth:`poll` (a
    few steps later on a busy GPU; at once for host values)."""

    def __init__(self) -> None:
        self._pending: collections.deque[tuple[HostCopy, Any]] = collections.deque()

    def read(self, value: Any, then: Any) -> None:
        copy = HostCopy(value) if isinstance(value, torch.Tensor) and value.is_cuda else None
        if copy is None:
            then(float(value))
        else:
            self._pending.append((copy, then))

    def poll(self) -> None:
        while self._pending and self._pending[0][0].done():
            copy, then = self._pending.popleft()
            then(float(copy.value))

    def __len__(self) -> int:
        return len(self._pending)
