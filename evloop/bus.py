"""The async lane: an in-process event bus between the training thread and the event loop.

The training thread calls :meth:`Bus.publish`, which only appends to the bounded
buffer of each interested subscription (a deque append, well under a microsecond)
and, once per step, :meth:`Bus.flush`, which wakes idle consumers with a single
cross-thread call per event loop. Consumers run on the event loop, each with its own
buffer and overflow policy:

``block``
    lossless: when the buffer is full the training thread waits for room.
``drop_oldest``
    the oldest buffered event is discarded to make room.
``latest``
    per-step events (batch start/end) coalesce to the newest one; lifecycle events
    (run/epoch start and end, failures) are kept in order.

Every discarded or coalesced event is counted and reported as a
:class:`~evloop.events.SubscriberDropped` event. A subscriber that raises is detached
and reported as :class:`~evloop.events.SubscriberFailed`; training goes on.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Literal

import anyio
import sniffio

from .events import (
    LIFECYCLE_EVENTS,
    Event,
    RunFailed,
    RunFinished,
    SubscriberDropped,
    SubscriberFailed,
)
from .host import EventCopies

__all__ = ["Bus", "Subscriber", "Subscription", "Policy"]

log = logging.getLogger("evloop")

Policy = Literal["block", "drop_oldest", "latest"]
POLICIES: tuple[str, ...] = ("block", "drop_oldest", "latest")
Handler = Callable[[Event], Awaitable[None] | None]


class Subscriber:
    """Base class of async-lane consumers (loggers, writers, dashboards).

    Subclasses override :meth:`handle` (sync or ``async``) and may set the class
    attributes below. A :class:`Subscriber` added with
    ``recipe.callbacks.add_callback(...)`` is put on the async lane automatically.
    """

    policy: Policy = "latest"
    maxsize: int = 256
    types: tuple[type[Event], ...] | None = None
    """Event types to receive; None receives every type."""
    every: int | None = None
    """Receive only per-step events whose ``iters`` is a multiple of this."""
    blocking: bool = False
    """True when :meth:`handle` does blocking I/O: it then runs in a worker thread."""
    host_copies: bool = True
    """Receive events whose CUDA tensors were copied to host memory (without syncing
    the device, see :mod:`evloop.host`); False hands over the device tensors."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def handle(self, event: Event) -> Awaitable[None] | None:
        raise NotImplementedError

    def flush(self) -> Awaitable[None] | None:
        """Called after each drained group of events (e.g. flush a file)."""

    def finish(self) -> Awaitable[None] | None:
        """Called once the run ended and every event reached this subscriber."""


class _Waker:
    """Schedules a callable on one event loop from any thread."""

    def __init__(self, loop: Any, call: Callable[[Callable[[], None]], Any]) -> None:
        self.thread = threading.get_ident()
        self.loop = loop
        self._call = call

    @classmethod
    def current(cls) -> _Waker:
        """The waker of the running loop (cached per thread, renewed with the loop)."""
        if sniffio.current_async_library() == "trio":
            import trio

            loop: Any = trio.lowlevel.current_trio_token()
            call = loop.run_sync_soon
        else:
            loop = asyncio.get_running_loop()
            call = loop.call_soon_threadsafe
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


class Subscription:
    """One consumer's filter, bounded buffer and overflow policy."""

    def __init__(
        self,
        name: str,
        handler: Handler | None,
        *,
        types: Iterable[type[Event]] | None = None,
        every: int | None = None,
        policy: Policy = "block",
        maxsize: int = 256,
        blocking: bool = False,
        host_copies: bool = True,
        owner: Subscriber | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        if every is not None and every < 1:
            raise ValueError(f"every must be a positive number of iterations, got {every}")
        self.name = name
        self.handler = handler
        self.types = tuple(types) if types is not None else None
        self.every = every
        self.policy = policy
        self.maxsize = maxsize
        self.blocking = blocking
        self.host_copies = host_copies
        self.owner = owner
        self.dropped = 0
        self._reported_drops = 0
        self.failed = False
        self.closing = False
        self._buffer: collections.deque[Event] = collections.deque(
            maxlen=maxsize if policy == "drop_oldest" else None
        )
        self._latest: collections.OrderedDict[Any, Event] = collections.OrderedDict()
        self._seq = 0
        self._lock = threading.Lock()
        self._space = threading.Event()
        self._space.set()
        self.waiting = False
        self._wake_event: anyio.Event | None = None
        self._waker: _Waker | None = None

    def accepts(self, event_type: type[Event]) -> bool:
        return self.types is None or issubclass(event_type, self.types)

    def takes_step(self, iters: int) -> bool:
        return self.every is None or iters % self.every == 0

    def wants(self, event: Event) -> bool:
        """The filter :meth:`Bus.publish` applies: its types, then every-N for per-step
        events (lifecycle events always pass)."""
        if not self.accepts(type(event)):
            return False
        return isinstance(event, LIFECYCLE_EVENTS) or self.takes_step(getattr(event, "iters", 0))

    def __len__(self) -> int:
        return len(self._latest) if self.policy == "latest" else len(self._buffer)

    # -- producer side (any thread) -------------------------------------------------
    def put(self, event: Event, may_block: bool, flush: Callable[[], None]) -> None:
        if self.policy == "latest":
            with self._lock:
                self._put_latest(event)
        elif self.policy == "drop_oldest":
            with self._lock:  # so that the count of drops is exact
                if len(self._buffer) == self.maxsize:
                    self.dropped += 1
                self._buffer.append(event)
        else:
            if may_block and len(self._buffer) >= self.maxsize:
                self._wait_for_space(flush)
            self._buffer.append(event)

    def _put_latest(self, event: Event) -> None:
        if isinstance(event, LIFECYCLE_EVENTS):
            self._seq += 1
            key: Any = self._seq
        else:
            key = type(event)
            if self._latest.pop(key, None) is not None:
                self.dropped += 1
        self._latest[key] = event
        if len(self._latest) > self.maxsize:
            self._latest.popitem(last=False)
            self.dropped += 1

    def _wait_for_space(self, flush: Callable[[], None]) -> None:
        while len(self._buffer) >= self.maxsize and not (self.failed or self.closing):
            self._space.clear()
            if len(self._buffer) < self.maxsize:
                break
            flush(True)
            self._space.wait(0.1)

    # -- consumer side (event loop) -------------------------------------------------
    def take(self) -> list[Event]:
        if self.policy == "latest":
            with self._lock:
                events = list(self._latest.values())
                self._latest.clear()
        elif self.policy == "drop_oldest":
            with self._lock:
                events = list(self._buffer)
                self._buffer.clear()
        else:
            events = []
            popleft = self._buffer.popleft
            try:
                while True:
                    events.append(popleft())
            except IndexError:
                pass
        self._space.set()
        return events

    def new_drops(self) -> int:
        fresh = self.dropped - self._reported_drops
        self._reported_drops = self.dropped
        return fresh

    async def wait(self) -> None:
        """Sleep until the producer wakes this subscription (or it is closed)."""
        self._waker = _Waker.current()
        self._wake_event = anyio.Event()
        self.waiting = True
        if len(self) or self.closing:
            self.waiting = False
            return
        await self._wake_event.wait()

    def wake(self) -> None:
        """Runs on the event loop thread."""
        self.waiting = False
        if self._wake_event is not None:
            self._wake_event.set()


class Bus:
    """Routes events from the training thread to subscriptions on the event loop."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._routes: dict[type[Event], tuple[Subscription, ...]] = {}
        self._to_wake: list[Subscription] = []
        self.wake_interval = 0.02
        self._last_wake = 0.0
        self._lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._loop_thread: int | None = None
        self._host = EventCopies()
        self.muted = False
        """Publish nothing (ranks other than 0 of a distributed run)."""

    # -- registration ---------------------------------------------------------------
    def subscribe(
        self,
        handler: Subscriber | Handler,
        *,
        types: Iterable[type[Event]] | None = None,
        every: int | None = None,
        policy: Policy | None = None,
        maxsize: int | None = None,
        blocking: bool | None = None,
        host_copies: bool | None = None,
        name: str | None = None,
    ) -> Subscription:
        """Subscribe a :class:`Subscriber` or a plain (async) callable taking an event.

        Keyword arguments override the subscriber's class attributes. Plain callables
        default to the lossless ``block`` policy.
        """
        owner = handler if isinstance(handler, Subscriber) else None
        if owner is not None:
            subscription = Subscription(
                name or owner.name,
                owner.handle,
                types=types if types is not None else owner.types,
                every=every if every is not None else owner.every,
                policy=policy or owner.policy,
                maxsize=maxsize or owner.maxsize,
                blocking=owner.blocking if blocking is None else blocking,
                host_copies=owner.host_copies if host_copies is None else host_copies,
                owner=owner,
            )
        else:
            if not callable(handler):
                raise TypeError(f"a subscriber must be callable, got {type(handler).__name__}")
            subscription = Subscription(
                name or getattr(handler, "__qualname__", repr(handler)),
                handler,
                types=types,
                every=every,
                policy=policy or "block",
                maxsize=maxsize or 256,
                blocking=bool(blocking),
                host_copies=host_copies is not False,
            )
        self._add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                self._routes = {}
        subscription.closing = True
        subscription._space.set()

    def _add(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.append(subscription)
            self._routes = {}

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subscriptions)

    def _route(self, event_type: type[Event]) -> tuple[Subscription, ...]:
        route = self._routes.get(event_type)
        if route is None:
            route = tuple(s for s in self._subscriptions if s.accepts(event_type))
            self._routes[event_type] = route
        return route

    # -- producer side --------------------------------------------------------------
    def wants(self, event_type: type[Event], iters: int = 0) -> bool:
        """Whether any live subscription would receive this step's event of that type.

        Lets the training thread skip building events nobody listens to.
        """
        if self.muted:
            return False
        for subscription in self._route(event_type):
            if not subscription.failed and subscription.takes_step(iters):
                return True
        return False

    def publish(self, event: Event) -> None:
        """Queue ``event`` for every interested subscription. Never blocks the event loop."""
        if self.muted:
            return
        may_block = threading.get_ident() != self._loop_thread
        iters = getattr(event, "iters", 0)
        per_step = not isinstance(event, LIFECYCLE_EVENTS)
        for subscription in self._route(type(event)):
            if subscription.failed or (per_step and not subscription.takes_step(iters)):
                continue
            subscription.put(event, may_block, self.flush)
            if subscription.waiting:
                subscription.waiting = False
                with self._wake_lock:  # a consumer's thread may publish too (drop reports)
                    self._to_wake.append(subscription)

    def flush(self, force: bool = False) -> None:
        """Wake the consumers that got events since the last wake-up: one call per loop,
        at most once per ``wake_interval`` unless ``force``.

        Every cross-thread wake-up costs the training thread a GIL hand-over, so the
        training loop calls this each step and consumers are woken at most 50 times a
        second; epoch and run ends, and a full lossless buffer, force it.
        """
        if not self._to_wake:
            return
        now = time.monotonic()
        if not force and now - self._last_wake < self.wake_interval:
            return
        self._last_wake = now
        with self._wake_lock:
            pending, self._to_wake = self._to_wake, []
        by_waker: dict[_Waker, list[Subscription]] = {}
        for subscription in pending:
            if subscription._waker is not None:
                by_waker.setdefault(subscription._waker, []).append(subscription)
        for waker, subscriptions in by_waker.items():
            waker.call(lambda subs=subscriptions: [s.wake() for s in subs])

    # -- consumer side --------------------------------------------------------------
    def bind(self) -> None:
        """Record the calling thread as the event loop's (called by ``Recipe.arun``)."""
        self._loop_thread = threading.get_ident()

    async def consume(self, subscription: Subscription) -> None:
        """Deliver events to ``subscription.handler`` until it is closed and drained."""
        assert subscription.handler is not None
        while True:
            events = subscription.take()
            self._report_drops(subscription)
            if events:
                if not await self._deliver(subscription, events):
                    return
                await anyio.lowlevel.checkpoint()
                continue
            if subscription.closing:
                return
            await subscription.wait()

    async def _deliver(self, subscription: Subscription, events: list[Event]) -> bool:
        owner = subscription.owner
        try:
            if subscription.host_copies:
                events = await self._host.to_host(events)
            if subscription.blocking:
                await anyio.to_thread.run_sync(_handle_all_sync, subscription, events)
            else:
                for event in events:
                    result = subscription.handler(event)  # type: ignore[misc]
                    if inspect.isawaitable(result):
                        await result
                if owner is not None:
                    await maybe_await(owner.flush())
        except Exception as error:  # isolate: report, detach, training goes on
            self._fail(subscription, error)
            return False
        return True

    def _report_drops(self, subscription: Subscription) -> None:
        fresh = subscription.new_drops()
        if fresh:
            self.publish(
                SubscriberDropped(
                    subscriber=subscription.name, dropped=fresh, total=subscription.dropped
                )
            )
            self.flush(force=True)

    def _fail(self, subscription: Subscription, error: Exception) -> None:
        subscription.failed = True
        subscription._space.set()
        subscription.take()
        trace = "".join(traceback.format_exception(error))
        log.error("subscriber %s failed and was detached: %r", subscription.name, error)
        self.publish(
            SubscriberFailed(subscriber=subscription.name, error=repr(error), traceback=trace)
        )
        self.flush(force=True)

    async def drain(self, subscriptions: Iterable[Subscription]) -> None:
        """Ask consumers to finish once their buffers are empty (end of a run)."""
        for subscription in subscriptions:
            subscription.closing = True
            subscription._space.set()
            subscription.wake()

    async def deliver_leftovers(self, subscriptions: Iterable[Subscription]) -> None:
        """After every consumer finished: deliver what one consumer published while
        another was already done (a last drop report), until nothing is left."""
        subscriptions = [s for s in subscriptions if s.handler is not None]
        for _ in range(3):  # a delivery may report drops once more, never more
            pending = [(s, s.take()) for s in subscriptions if not s.failed and len(s)]
            if not pending:
                return
            for subscription, events in pending:
                self._report_drops(subscription)
                await self._deliver(subscription, events)

    async def stream(
        self,
        *,
        types: Iterable[type[Event]] | None = None,
        every: int | None = None,
        policy: Policy = "drop_oldest",
        maxsize: int = 1024,
        until_run_end: bool = True,
        host_copies: bool = True,
    ) -> AsyncIterator[Event]:
        """Iterate over events as they are published.

        Ends after the run's :class:`RunFinished`/:class:`RunFailed` when
        ``until_run_end`` (the default). The default policy never slows training.
        CUDA tensors arrive as host copies unless ``host_copies=False``.
        """
        subscription = Subscription(
            "stream", None, types=types, every=every, policy=policy, maxsize=maxsize
        )
        self._add(subscription)
        try:
            while True:
                events = subscription.take()
                self._report_drops(subscription)
                if host_copies and events:
                    events = await self._host.to_host(events)
                for event in events:
                    yield event
                    if until_run_end and isinstance(event, RunFinished | RunFailed):
                        return
                if not events:
                    if subscription.closing:
                        return
                    await subscription.wait()
        finally:
            self.unsubscribe(subscription)


def _handle_all_sync(subscription: Subscription, events: list[Event]) -> None:
    for event in events:
        subscription.handler(event)  # type: ignore[misc]
    if subscription.owner is not None:
        subscription.owner.flush()


async def maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result
