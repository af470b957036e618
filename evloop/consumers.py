"""The bus's consumer side: delivering events to subscribers on the event loop, and
the consumer tasks of one top-level run.

:class:`Delivery` (each bus's ``bus.delivery``): a subscription's consumer takes what
its mailbox holds, makes host copies when asked (the bus's ``prepare``), and hands
the events to the handler (in a worker thread for a blocking one); a handler that
raises is detached and reported, and drops are reported as
:class:`~evloop.events.SubscriberDropped` events.

:class:`Consumers`: started with a top-level run, drained at its end within deadlines,
abandoned (and reported) when stuck. Each consumer runs in its own cancel scope,
shielded from the caller's cancellation so that a cancelled ``arun`` still drains.
When training ends, lossy subscribers get ``lossy_s`` seconds to deliver what is left
and lossless ones ``lossless_s`` (saying every 10 s what they still hold); a
subscriber past its deadline is abandoned — its task cancelled, a handler stuck in a
worker thread left there (a daemon) — and reported as
:class:`~evloop.events.SubscriberFailed`. A recipe run nested in this one publishes on
its own bus: its consumers are adopted the first time it runs (from the training or
an evaluation thread).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .events import Event, RunFailed, RunFinished, SubscriberDropped, SubscriberFailed
from .mailbox import Filter, Mailbox
from .subscription import Subscription

if TYPE_CHECKING:
    from .bus import Bus

__all__ = [
    "Consumers",
    "Delivery",
    "DRAIN_LOSSY_S",
    "DRAIN_LOSSLESS_S",
    "Prepare",
    "maybe_await",
]

log = logging.getLogger("evloop")

Prepare = Callable[[list[Event]], Awaitable[list[Event]]]
YIELD_EVERY = 256  # events a stream hands over before letting the loop's other tasks in
DRAIN_LOSSY_S = 5.0
DRAIN_LOSSLESS_S = 60.0
REPORT_EVERY_S = 10.0


class Delivery:
    """A bus's consumer side (``bus.delivery``): :meth:`consume` per subscriber,
    :meth:`stream` for ``async for`` readers, :meth:`deliver_leftovers` at a run's end,
    :meth:`abandon` for a stuck subscriber."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def consume(self, subscription: Subscription) -> None:
        """Deliver events to ``subscription.handler`` until it is closed and drained.

        A lossy subscriber (``latest``, ``drop_oldest``) that finds events waiting
        when it is done with a delivery gets them at the next tick of
        ``wake_interval``, ticks shared by every consumer of the loop: one slower than
        the events (a logger writing to a slow stream) would otherwise come back for
        more at once, and take the interpreter lock from the training thread hundreds
        of times a second. One that keeps up sleeps until the bus wakes it (at most
        once per ``wake_interval`` too)."""
        assert subscription.handler is not None
        mailbox = subscription.mailbox
        paced = subscription.policy != "block"
        while True:
            events = mailbox.take()
            self._report_drops(subscription)
            if events:
                if not await self._deliver(subscription, events):
                    return
                subscription.deliveries += 1
                if paced and len(mailbox) and not mailbox.closing:  # behind: next tick
                    await _next_tick(self.bus.wake_interval)
                else:
                    await anyio.lowlevel.checkpoint()
                continue
            if mailbox.closing:
                return
            await mailbox.wait()

    async def _prepared(self, events: list[Event], host_copies: bool) -> list[Event]:
        if host_copies and self.bus.prepare is not None and events:
            return await self.bus.prepare(events)
        return events

    async def _deliver(self, subscription: Subscription, events: list[Event]) -> bool:
        owner = subscription.owner
        try:
            events = await self._prepared(events, subscription.host_copies)
            if subscription.blocking:  # a stuck handler can be abandoned at the run's end
                await subscription.in_worker(_handle_all_sync, subscription, events)
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
        fresh = subscription.mailbox.new_drops()
        if fresh:
            self.bus.publish(
                SubscriberDropped(
                    subscriber=subscription.name, dropped=fresh, total=subscription.dropped
                )
            )
            self.bus.flush(force=True)

    def abandon(self, subscription: Subscription, reason: str) -> None:
        """Give up on a stuck subscriber: detach it and report why."""
        self._detach(subscription, reason)
        log.error("subscriber %s %s", subscription.name, reason)
        self.bus.publish(SubscriberFailed(subscriber=subscription.name, error=reason, traceback=""))
        self.bus.flush(force=True)

    def _detach(self, subscription: Subscription, reason: str) -> None:
        subscription.failed = True
        subscription.mailbox.close()
        subscription.mailbox.take()
        self.bus.routes_changed()
        if subscription.owner is not None:
            try:
                subscription.owner.detached(reason)
            except Exception as error:  # it is gone already: say so, nothing more
                log.error("subscriber %s failed to let go: %r", subscription.name, error)

    def _fail(self, subscription: Subscription, error: Exception) -> None:
        self._detach(subscription, repr(error))
        trace = "".join(traceback.format_exception(error))
        log.error("subscriber %s failed and was detached: %r", subscription.name, error)
        self.bus.publish(
            SubscriberFailed(subscriber=subscription.name, error=repr(error), traceback=trace)
        )
        self.bus.flush(force=True)

    async def deliver_leftovers(self, subscriptions: Iterable[Subscription]) -> None:
        """After every consumer finished: deliver what one consumer published while
        another was already done (a last drop report), until nothing is left."""
        subscriptions = [s for s in subscriptions if s.handler is not None]
        for _ in range(3):  # a delivery may report drops once more, never more
            pending = [(s, s.mailbox.take()) for s in subscriptions if not s.failed and len(s)]
            if not pending:
                return
            for subscription, events in pending:
                self._report_drops(subscription)
                await self._deliver(subscription, events)

    async def stream(
        self, subscription: Subscription, until_run_end: bool, host_copies: bool
    ) -> AsyncIterator[Event]:
        """The events ``subscription`` (a handler-less one, attached once iterated)
        receives from now on: see :meth:`Bus.stream`."""
        self.bus.attach(subscription)
        mailbox = subscription.mailbox
        try:
            while True:
                events = await self._prepared(mailbox.take(), host_copies)
                self._report_drops(subscription)
                for index, event in enumerate(events, start=1):
                    yield event
                    if until_run_end and _ends_run(event, subscription.filter):
                        return
                    if index % YIELD_EVERY == 0:  # a fast run must not starve other tasks
                        await anyio.lowlevel.checkpoint()
                if events:
                    await anyio.lowlevel.checkpoint()
                else:
                    if mailbox.closing:
                        return
                    await mailbox.wait()
        finally:
            self.bus.unsubscribe(subscription)


def _ends_run(event: Event, wanted: Filter) -> bool:
    """Whether ``event`` ends the run a stream follows (not a nested one's end)."""
    if not isinstance(event, RunFinished | RunFailed):
        return False
    return not wanted.nested or not event.source


async def _next_tick(interval: float) -> None:
    """Sleep until the next multiple of ``interval`` on the monotonic clock (consumers
    that sleep to the same tick wake in one pass of the loop)."""
    now = anyio.current_time()
    await anyio.sleep(interval - now % interval)


def _handle_all_sync(subscription: Subscription, events: list[Event]) -> None:
    for event in events:
        subscription.handler(event)  # type: ignore[misc]
    if subscription.owner is not None:
        subscription.owner.flush()


async def maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


@dataclass(eq=False)
class _Consumer:
    bus: Bus
    subscription: Subscription
    scope: anyio.CancelScope | None = None  # made on the event loop, by start_in
    done: anyio.Event | None = None

    def start_in(self, tg: anyio.abc.TaskGroup) -> None:
        self.scope, self.done = anyio.CancelScope(shield=True), anyio.Event()
        tg.start_soon(self._run)

    async def _run(self) -> None:
        assert self.scope is not None and self.done is not None
        with self.scope:
            await self.bus.delivery.consume(self.subscription)
        self.done.set()


class Consumers:
    """``Consumers(bus)``; :meth:`start` in the run's task group, :meth:`adopt` from any
    thread, :meth:`drain` when training ended, then :meth:`finish`."""

    def __init__(self, root: Bus) -> None:
        self.root = root
        self._all: list[_Consumer] = []
        self._adopted = {id(root)}
        self._lock = threading.Lock()
        self._pending: Mailbox[_Consumer] = Mailbox(1_000_000, "block")
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def subscriptions(self) -> list[Subscription]:
        return [consumer.subscription for consumer in self._all]

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        for subscription in self._fresh(self.root):
            consumer = _Consumer(self.root, subscription)
            self._all.append(consumer)
            consumer.start_in(tg)
        tg.start_soon(self._supervise)

    @staticmethod
    def _fresh(bus: Bus) -> list[Subscription]:
        subscriptions = bus.consumers()
        for subscription in subscriptions:
            subscription.reopen()
        return subscriptions

    def adopt(self, bus: Bus) -> None:
        """Consume ``bus``'s subscribers too (a nested run's); any thread."""
        if id(bus) in self._adopted:
            return
        with self._lock:
            if id(bus) in self._adopted:
                return
            self._adopted.add(id(bus))
            for subscription in self._fresh(bus):
                consumer = _Consumer(bus, subscription)
                self._all.append(consumer)
                if self._pending.put(consumer):
                    self._pending.notify()

    async def _supervise(self) -> None:
        assert self._tg is not None
        while True:
            for consumer in self._pending.take():
                consumer.start_in(self._tg)
            if self._pending.closing and not len(self._pending):
                return
            await self._pending.wait()

    async def drain(self, lossy_s: float, lossless_s: float) -> None:
        """Training ended: let every consumer deliver what is left, each within its
        deadline; abandon and report those past it."""
        self._pending.close()
        self._pending.wake()
        self.root.flush(force=True)
        for consumer in self._all:
            consumer.subscription.mailbox.close()
            consumer.subscription.mailbox.wake()
        with anyio.move_on_after(lossy_s):  # adoptions on their way to the supervisor
            while len(self._pending) or any(c.done is None for c in self._all):
                await anyio.sleep(0.001)
        start = time.monotonic()
        for consumer in list(self._all):
            if consumer.done is None:  # adopted too late to start
                continue
            lossless = consumer.subscription.policy == "block"
            limit = lossless_s if lossless else lossy_s
            while not consumer.done.is_set():
                left = start + limit - time.monotonic()
                if left <= 0:
                    self._abandon(consumer, limit)
                    break
                with anyio.move_on_after(min(left, REPORT_EVERY_S)):
                    await consumer.done.wait()
                if lossless and not consumer.done.is_set() and left > REPORT_EVERY_S:
                    log.warning(
                        "the run ended; waiting for %s to write %d more events (at most "
                        "%.0f s more)",
                        consumer.subscription.name,
                        len(consumer.subscription.mailbox),
                        max(0.0, start + limit - time.monotonic()),
                    )

    def _abandon(self, consumer: _Consumer, limit: float) -> None:
        subscription = consumer.subscription
        undelivered = len(subscription.mailbox)
        assert consumer.scope is not None
        consumer.scope.cancel()
        consumer.bus.delivery.abandon(
            subscription,
            f"did not finish within {limit:.0f} s after the run ended ({undelivered} events "
            "undelivered): abandoned",
        )

    async def finish(self, deadline_s: float) -> None:
        """What one consumer published after another was done, then each
        subscriber's ``finish()``; at most ``deadline_s`` in all."""
        subscriptions = self.subscriptions
        with anyio.move_on_after(deadline_s) as scope:
            await self.root.delivery.deliver_leftovers(subscriptions)
            for subscription in subscriptions:
                owner = subscription.owner
                if owner is None or subscription.failed:
                    continue
                try:
                    await maybe_await(owner.finish())
                except Exception as error:  # a failing writer must not hide the outcome
                    log.error("subscriber %s failed to finish: %r", subscription.name, error)
        if scope.cancelled_caught:
            log.error("subscribers did not finish within %.0f s after the run", deadline_s)
