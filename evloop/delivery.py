"""The bus's consumer side: delivering events to subscribers on the event loop.

Each subscription's consumer task takes what its mailbox holds, makes host copies
when asked (``prepare``), and hands the events to the handler (in a worker thread
for a blocking one); a handler that raises is detached and reported, and drops are
reported as :class:`~evloop.events.SubscriberDropped` events. The publishing side is
:class:`evloop.bus.Bus`, which inherits this.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio

from .events import Event, RunFailed, RunFinished, SubscriberDropped, SubscriberFailed
from .mailbox import Filter, Policy
from .subscription import Subscription

__all__ = ["Delivery", "Prepare", "maybe_await"]

log = logging.getLogger("evloop")

Prepare = Callable[[list[Event]], Awaitable[list[Event]]]
YIELD_EVERY = 256  # events a stream hands over before letting the loop's other tasks in


class Delivery:
    """What consumers run: :meth:`consume` per subscriber, :meth:`stream` for ``async
    for`` readers, and the end of a run (:meth:`drain`, :meth:`deliver_leftovers`)."""

    prepare: Prepare | None

    if TYPE_CHECKING:  # the publishing side's, in Bus
        wake_interval: float

        def publish(self, event: Event) -> None: ...

        def flush(self, force: bool = False) -> None: ...

        def _add(self, subscription: Subscription) -> None: ...

        def unsubscribe(self, subscription: Subscription) -> None: ...

        @staticmethod
        def routes_changed() -> None: ...

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
                    await _next_tick(self.wake_interval)
                else:
                    await anyio.lowlevel.checkpoint()
                continue
            if mailbox.closing:
                return
            await mailbox.wait()

    async def _prepared(self, events: list[Event], host_copies: bool) -> list[Event]:
        if host_copies and self.prepare is not None and events:
            return await self.prepare(events)
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
            self.publish(
                SubscriberDropped(
                    subscriber=subscription.name, dropped=fresh, total=subscription.dropped
                )
            )
            self.flush(force=True)

    def abandon(self, subscription: Subscription, reason: str) -> None:
        """Give up on a stuck subscriber: detach it and report why."""
        self._detach(subscription, reason)
        log.error("subscriber %s %s", subscription.name, reason)
        self.publish(SubscriberFailed(subscriber=subscription.name, error=reason, traceback=""))
        self.flush(force=True)

    def _detach(self, subscription: Subscription, reason: str) -> None:
        subscription.failed = True
        subscription.mailbox.close()
        subscription.mailbox.take()
        self.routes_changed()
        if subscription.owner is not None:
            try:
                subscription.owner.detached(reason)
            except Exception as error:  # it is gone already: say so, nothing more
                log.error("subscriber %s failed to let go: %r", subscription.name, error)

    def _fail(self, subscription: Subscription, error: Exception) -> None:
        self._detach(subscription, repr(error))
        trace = "".join(traceback.format_exception(error))
        log.error("subscriber %s failed and was detached: %r", subscription.name, error)
        self.publish(
            SubscriberFailed(subscriber=subscription.name, error=repr(error), traceback=trace)
        )
        self.flush(force=True)

    @staticmethod
    def drain(subscriptions: Iterable[Subscription]) -> None:
        """Ask consumers to finish once their mailboxes are empty (end of a run)."""
        for subscription in subscriptions:
            subscription.mailbox.close()
            subscription.mailbox.wake()

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
        self,
        *,
        types: Iterable[type[Event]] | None = None,
        every: int | None = None,
        nested: bool | Iterable[str] = False,
        policy: Policy = "drop_oldest",
        maxsize: int = 1024,
        until_run_end: bool = True,
        host_copies: bool = True,
    ) -> AsyncIterator[Event]:
        """Iterate over events as they are published.

        Ends after the run's :class:`RunFinished`/:class:`RunFailed` when
        ``until_run_end`` (the default). The default policy never slows training.
        CUDA tensors arrive as host copies unless ``host_copies=False``; events of
        nested runs only with ``nested`` (True, or the sources to receive).
        """
        subscription = Subscription(
            "stream", None, types=types, every=every, nested=nested, policy=policy, maxsize=maxsize
        )
        self._add(subscription)
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
            self.unsubscribe(subscription)


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
