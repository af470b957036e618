"""One bounded buffer with an overflow policy and a wake-up, and one event filter.

Whatever waits for a consumer — a bus subscription's events, a websocket client's
frames, the visdom logger's points — waits in a :class:`Mailbox`, and what a consumer
receives is chosen by a :class:`Filter`.

Policies, for when ``maxsize`` items wait:

``block``
    lossless: a producer that may wait does (:meth:`Mailbox.wait_for_room`).
``drop_oldest``
    the oldest item is discarded.
``latest``
    keyed items (per-step events) coalesce to the newest of their key once
    ``coalesce_after`` items wait; unkeyed items (lifecycle events) keep their order;
    past ``maxsize`` the oldest goes.

With ``close_on_overflow`` a mailbox that overflows refuses everything from then on
(:attr:`Mailbox.overflowed`): its consumer is too slow and is let go. Every discarded
or coalesced item is counted in :attr:`Mailbox.dropped`.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import anyio

from .events import ANY_EVENT, LIFECYCLE_EVENTS, Event

__all__ = ["Mailbox", "Filter", "Waker", "Policy", "POLICIES"]

Policy = Literal["block", "drop_oldest", "latest"]
POLICIES: tuple[str, ...] = ("block", "drop_oldest", "latest")
T = TypeVar("T")


class Waker:
    """Schedules a callable on one event loop (asyncio or trio) from any thread."""

    def __init__(self, loop: Any, call: Callable[[Callable[[], None]], Any]) -> None:
        self.thread = threading.get_ident()
        self.loop = loop
        self._call = call

    @classmethod
    def current(cls) -> Waker:
        """The waker of the loop running in this thread (cached per thread)."""
        try:
            loop: Any = asyncio.get_running_loop()
            call = loop.call_soon_threadsafe
        except RuntimeError:  # not asyncio: anyio's other backend
            trio: Any = sys.modules["trio"]
            loop = trio.lowlevel.current_trio_token()
            call = loop.run_sync_soon
        cached = getattr(_wakers, "waker", None)
        if cached is None or cached.loop is not loop:
            cached = _wakers.waker = cls(loop, call)
        return cached

    def call(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self.thread:
            fn()
            return
        try:
            self._call(fn)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


_wakers = threading.local()


class Mailbox(Generic[T]):
    """A bounded buffer filled from any thread and emptied by one consumer task."""

    def __init__(
        self,
        maxsize: int = 256,
        policy: Policy = "block",
        *,
        coalesce_after: int = 0,
        close_on_overflow: bool = False,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.policy = policy
        self.coalesce_after = coalesce_after
        self.close_on_overflow = close_on_overflow
        self.dropped = 0
        self.overflowed = False
        self.closing = False
        """Set when the consumer should finish once the mailbox is empty."""
        self.waiting = False
        """The consumer sleeps in :meth:`wait`: a producer must wake it."""
        self._reported_drops = 0
        self._queue: collections.deque[T] = collections.deque(
            maxlen=maxsize if policy == "drop_oldest" and not close_on_overflow else None
        )
        self._keyed: collections.OrderedDict[Hashable, T] = collections.OrderedDict()
        self._seq = 0
        self._lock = threading.Lock()
        self._room = threading.Event()
        self._room.set()
        self._wake_event: anyio.Event | None = None
        self.waker: Waker | None = None
        self.last_take = time.monotonic()
        """When the consumer last took what was waiting."""

    def __len__(self) -> int:
        return len(self._keyed) if self.policy == "latest" else len(self._queue)

    @property
    def full(self) -> bool:
        return len(self) >= self.maxsize

    # -- producer side (any thread) ---------------------------------------------------
    def put(self, item: T, key: Hashable | None = None) -> bool:
        """Queue ``item``; ``key`` makes it coalescible under the ``latest`` policy.

        Returns True when the consumer is asleep and must be woken (:meth:`wake`).
        """
        if self.overflowed:
            return False
        if self.policy == "latest":
            with self._lock:
                self._put_keyed(item, key)
        elif self.policy == "drop_oldest":
            with self._lock:  # so that the count of drops is exact
                if len(self._queue) >= self.maxsize:
                    self._overflow()
                if not self.overflowed:
                    self._queue.append(item)
        else:
            self._queue.append(item)
        if self.waiting:
            self.waiting = False
            return True
        return False

    def _put_keyed(self, item: T, key: Hashable | None) -> None:
        if key is None or len(self._keyed) < self.coalesce_after:
            self._seq += 1
            key = ("seq", self._seq)
        elif self._keyed.pop(key, None) is not None:
            self.dropped += 1
        self._keyed[key] = item
        if len(self._keyed) > self.maxsize:
            self._overflow()

    def _overflow(self) -> None:
        if self.close_on_overflow:
            self.overflowed = True
            self._queue.clear()
            self._keyed.clear()
            return
        self.dropped += 1
        if self.policy == "latest":
            self._keyed.popitem(last=False)
        elif self._queue.maxlen is None:
            self._queue.popleft()

    def wait_for_room(
        self,
        flush: Callable[[bool], None],
        give_up: Callable[[], bool] = lambda: False,
        poll: float = 0.1,
    ) -> None:
        """Block this (producer) thread until the consumer made room, the mailbox is
        closing, or ``give_up()``; ``flush(True)`` wakes the consumer meanwhile, every
        ``poll`` seconds."""
        while len(self._queue) >= self.maxsize and not self.closing:
            self._room.clear()
            if len(self._queue) < self.maxsize:
                break
            flush(True)
            if self._room.wait(poll):
                continue
            if give_up():
                return

    def release(self) -> None:
        """Let a producer waiting for room go (the consumer is finishing or gone)."""
        self._room.set()

    # -- consumer side ----------------------------------------------------------------
    def take(self) -> list[T]:
        """Everything waiting, oldest first."""
        self.last_take = time.monotonic()
        if self.policy == "latest":
            with self._lock:
                items = list(self._keyed.values())
                self._keyed.clear()
        elif self.policy == "drop_oldest":
            with self._lock:
                items = list(self._queue)
                self._queue.clear()
        else:
            items = []
            popleft = self._queue.popleft
            try:
                while True:
                    items.append(popleft())
            except IndexError:
                pass
        self._room.set()
        return items

    def new_drops(self) -> int:
        """Drops since the last call (to report them once)."""
        fresh = self.dropped - self._reported_drops
        self._reported_drops = self.dropped
        return fresh

    async def wait(self) -> None:
        """Sleep until a producer wakes this mailbox, or it is closing."""
        self.waker = Waker.current()
        self._wake_event = anyio.Event()
        self.waiting = True
        if len(self) or self.closing:
            self.waiting = False
            return
        await self._wake_event.wait()

    def wake(self) -> None:
        """Wake the consumer; runs on its event loop's thread."""
        self.waiting = False
        if self._wake_event is not None:
            self._wake_event.set()

    def notify(self) -> None:
        """Wake the consumer from any thread (one cross-thread call)."""
        if self.waker is not None:
            self.waker.call(self.wake)

    def close(self) -> None:
        """Ask the consumer to finish once empty; producers stop waiting for room."""
        self.closing = True
        self._room.set()


@dataclass(frozen=True)
class Filter:
    """What a consumer receives: event ``types`` (None: all), per-step events only every
    ``every`` iterations (lifecycle events always pass), and events of nested runs
    (an evaluation, a GAN's generator step): none (False), all (True) or those of the
    named sources."""

    types: tuple[type[Event], ...] | None = None
    every: int | None = None
    nested: bool | frozenset[str] = False

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"every must be a positive number of iterations, got {self.every}")

    @classmethod
    def of(
        cls,
        types: Iterable[type[Event]] | None = None,
        every: int | None = None,
        nested: bool | Iterable[str] = False,
    ) -> Filter:
        return cls(
            tuple(types) if types is not None else None,
            every,
            nested if isinstance(nested, bool) else frozenset(nested),
        )

    @classmethod
    def from_tags(cls, tags: Iterable[str] | None, every: int | None = None) -> Filter:
        """A filter from the wire names of event types (``batch_ended`` …); a name
        that is no event type matches nothing."""
        if tags is None:
            return cls(None, every)
        wanted = set(tags)
        return cls(tuple(t for t in EVENT_TYPES if t.__struct_config__.tag in wanted), every)

    def accepts(self, event_type: type[Event]) -> bool:
        return self.types is None or issubclass(event_type, self.types)

    def takes_step(self, iters: int) -> bool:
        return self.every is None or iters % self.every == 0

    def takes_source(self, source: str) -> bool:
        """Whether events published by the nested run ``source`` pass."""
        if isinstance(self.nested, bool):
            return self.nested
        return source in self.nested

    def wants(self, event: Event, nested: bool = False) -> bool:
        """The whole filter: types, then every-N for per-step events, then the source
        of an event forwarded from a nested run."""
        if not self.accepts(type(event)):
            return False
        if nested and not self.takes_source(event.source):
            return False
        return isinstance(event, LIFECYCLE_EVENTS) or self.takes_step(getattr(event, "iters", 0))


EVENT_TYPES: tuple[type[Event], ...] = ANY_EVENT.__args__
