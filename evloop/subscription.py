"""Subscribers of the async lane and their subscriptions: a filter, a mailbox, and
how the handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .events import LIFECYCLE_EVENTS, Event
from .mailbox import Filter, Mailbox, Policy
from .worker import DaemonWorker

__all__ = ["Subscriber", "Subscription", "Handler"]

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
    nested: bool = False
    """Also receive the events of runs nested in this recipe's (tagged ``source``)."""
    blocking: bool = False
    """True when :meth:`handle` does blocking I/O: it then runs in a worker thread."""
    host_copies: bool = True
    """Receive events whose CUDA tensors were copied to host memory (without syncing
    the device, see :mod:`evloop.host`); False hands over the device tensors."""

    @property
    def name(self) -> str:
        """How failures and the dashboard name this subscriber (its class by default)."""
        return type(self).__name__

    def handle(self, event: Event) -> Awaitable[None] | None:
        """Receive one event (a coroutine, or a plain call in a thread of its own when
        ``blocking``); an exception detaches the subscriber, reported, and the run goes
        on."""
        raise NotImplementedError

    def flush(self) -> Awaitable[None] | None:
        """Called after each drained group of events (e.g. flush a file)."""

    def finish(self) -> Awaitable[None] | None:
        """Called once the run ended and every event reached this subscriber."""

    def detached(self, reason: str) -> None:
        """Called instead of :meth:`finish` when the bus gave up on this subscriber:
        its handler raised, or it was stuck past the run's deadline (and may still be
        stuck in its worker thread). Free what it holds, without waiting."""


class Subscription:
    """One consumer: its filter, its mailbox, and how its handler runs."""

    def __init__(
        self,
        name: str,
        handler: Handler | None,
        *,
        types: Iterable[type[Event]] | None = None,
        every: int | None = None,
        nested: bool | Iterable[str] = False,
        policy: Policy = "block",
        maxsize: int = 256,
        blocking: bool = False,
        host_copies: bool = True,
        owner: Subscriber | None = None,
    ) -> None:
        self.name = name
        self.handler = handler
        self.filter = Filter.of(types, every, nested)
        self.mailbox: Mailbox[Event] = Mailbox(maxsize, policy)
        self.blocking = blocking
        self.host_copies = host_copies
        self.owner = owner
        self.failed = False
        self.deliveries = 0
        """How many times the handler was handed events (each wakes its loop)."""
        self.next_stall_report = 10.0  # seconds without a take before warning again
        self._worker: DaemonWorker | None = None

    async def in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in this subscriber's own daemon thread (blocking handlers):
        cancelling the wait abandons a call that never returns, and a daemon thread
        never keeps the process from exiting."""
        if self._worker is None:
            self._worker = DaemonWorker(f"evloop-{self.name}")
        return await self._worker.run(fn, *args)

    @property
    def policy(self) -> Policy:
        return self.mailbox.policy

    @property
    def dropped(self) -> int:
        return self.mailbox.dropped

    @property
    def closing(self) -> bool:
        return self.mailbox.closing

    def __len__(self) -> int:
        return len(self.mailbox)

    def wants(self, event: Event) -> bool:
        return self.filter.wants(event)

    def put(
        self,
        event: Event,
        may_block: bool,
        flush: Callable[[bool], None],
        give_up: Callable[[Subscription], bool] = lambda s: False,
    ) -> bool:
        """Queue ``event``; True when the consumer must be woken. A lossless mailbox
        that is full makes the caller wait, until ``give_up(self)``."""
        mailbox = self.mailbox
        if mailbox.policy == "block" and may_block and mailbox.full:
            mailbox.wait_for_room(flush, lambda: give_up(self))
            if self.failed:
                return False
        key = None if isinstance(event, LIFECYCLE_EVENTS) else type(event)
        return mailbox.put(event, key)

    def reopen(self) -> None:
        """Ready for another run (a finished run closed it)."""
        self.mailbox.closing = False
