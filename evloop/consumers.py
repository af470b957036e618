"""The consumer tasks of one top-level run: started with it, drained at its end within
deadlines, abandoned (and reported) when stuck.

Each subscriber's consumer runs in its own cancel scope, shielded from the caller's
cancellation so that a cancelled ``arun`` still drains. When training ends, lossy
subscribers get ``lossy_s`` seconds to deliver what is left and lossless ones
``lossless_s`` (saying every 10 s what they still hold); a subscriber past its
deadline is abandoned — its task cancelled, a handler stuck in a worker thread left
there (a daemon) — and reported as :class:`~evloop.events.SubscriberFailed`.

A recipe run nested in this one publishes on its own bus: its consumers are adopted
the first time it runs (from the training or an evaluation thread).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import anyio
import anyio.abc

from .bus import Bus, Subscription
from .delivery import maybe_await
from .mailbox import Mailbox

__all__ = ["Consumers", "DRAIN_LOSSY_S", "DRAIN_LOSSLESS_S"]

log = logging.getLogger("evloop")
DRAIN_LOSSY_S = 5.0
DRAIN_LOSSLESS_S = 60.0
REPORT_EVERY_S = 10.0


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
            await self.bus.consume(self.subscription)
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
        consumer.bus.abandon(
            subscription,
            f"did not finish within {limit:.0f} s after the run ended ({undelivered} events "
            "undelivered): abandoned",
        )

    async def finish(self, deadline_s: float) -> None:
        """What one consumer published after another was done, then each
        subscriber's ``finish()``; at most ``deadline_s`` in all."""
        subscriptions = self.subscriptions
        with anyio.move_on_after(deadline_s) as scope:
            await self.root.deliver_leftovers(subscriptions)
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
