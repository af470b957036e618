"""The async lane: an in-process event bus between the training thread and the event loop.

The training thread calls :meth:`Bus.publish`, which only appends to the
:class:`~evloop.mailbox.Mailbox` of each interested subscription (a deque append,
well under a microsecond) and, once per step, :meth:`Bus.flush`, which wakes idle
consumers with a single cross-thread call per event loop. Consumers run on the event
loop, each with its own bounded mailbox and overflow policy (``block``: lossless,
``drop_oldest``, ``latest``: per-step events coalesce to the newest).

Every discarded or coalesced event is counted and reported as a
:class:`~evloop.events.SubscriberDropped` event. A subscriber that raises is detached
and reported as :class:`~evloop.events.SubscriberFailed`; training goes on.

A recipe run nested in another one (an evaluation, a GAN's generator step) links its
bus to the outer run's: its events also reach the outer subscribers that asked for
nested events (``nested=True``), tagged with their ``source``.

The bus knows nothing of devices: a recipe's bus is given ``prepare`` (host copies of
CUDA tensors, :mod:`evloop.host`), applied to events before delivery.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from .consumers import Delivery, Prepare
from .events import LIFECYCLE_EVENTS, Event
from .mailbox import Mailbox, Policy, Waker
from .subscription import Handler, Subscriber, Subscription

__all__ = ["Bus", "Policy", "Subscriber", "Subscription"]

log = logging.getLogger("evloop")

StepGate = tuple[int, ...]
"""The periods (``every``) of the subscriptions an event type would reach: ``()`` none,
``(1,)`` every step. See :meth:`Bus.gate`."""

_revisions = itertools.count(1)


def due(gate: StepGate, iters: int) -> bool:
    """Whether a subscription behind ``gate`` takes the event of step ``iters``."""
    for every in gate:
        if iters % every == 0:
            return True
    return False


class Bus:
    """Routes events from the training thread to subscriptions on the event loop;
    its consumer side is ``bus.delivery`` (:class:`~evloop.consumers.Delivery`)."""

    def __init__(self, prepare: Prepare | None = None) -> None:
        self.prepare = prepare
        """Applied to events before delivery to subscribers that want host copies."""
        self.delivery = Delivery(self)
        self._subscriptions: list[Subscription] = []
        self._routes: dict[tuple[type[Event], bool], tuple[Subscription, ...]] = {}
        self._takes_nested = False  # a subscription wants events of nested runs
        self._to_wake: list[Subscription] = []
        self.wake_interval = 0.02
        self._last_wake = 0.0
        self._lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._loop_thread: int | None = None
        self._parent: Bus | None = None
        self._hub: Bus = self  # the bus whose flush wakes this one's consumers
        self._muted = False
        self.stop_requested: Callable[[], bool] = lambda: False
        """Reads the run's stop flag (its recipe's :class:`~evloop.run.Run` sets it):
        once the run was asked to stop, a stuck lossless subscriber is abandoned after
        ``stall_s`` seconds instead of holding the run forever."""
        self.stall_s = 10.0
        self._gates: dict[tuple[Any, ...], StepGate] = {}
        self._gates_revision = 0

    revision = 0
    """Changes whenever any bus's routing may have changed (a subscription added,
    removed or failed, a bus muted): what was derived from the routes before
    (:meth:`gate`) is stale. Linking a nested run's bus does not change it: that bus's
    gates are kept per outer bus it was linked to (a nested run links and unlinks at
    every outer step)."""

    @staticmethod
    def routes_changed() -> None:
        Bus.revision = next(_revisions)

    @property
    def muted(self) -> bool:
        """Publish nothing (ranks other than 0 of a distributed run)."""
        return self._hub._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        self._muted = value
        Bus.routes_changed()

    # -- registration ---------------------------------------------------------------
    def subscribe(
        self,
        handler: Subscriber | Handler,
        *,
        types: Iterable[type[Event]] | None = None,
        every: int | None = None,
        nested: bool | Iterable[str] | None = None,
        policy: Policy | None = None,
        maxsize: int | None = None,
        blocking: bool | None = None,
        host_copies: bool | None = None,
        name: str | None = None,
    ) -> Subscription:
        """Subscribe a :class:`Subscriber` or a plain (async) callable taking an event.

        Keyword arguments override the subscriber's class attributes. A plain callable
        gets a :class:`Subscriber`'s defaults: the lossy ``latest`` policy (a slow one
        never stalls training; per-step events coalesce to the newest, the others are
        all kept) with a mailbox of 256; ask for ``policy='block'`` to receive every
        event, at the price of training waiting for it when it falls behind.
        """
        if isinstance(handler, Subscriber):
            owner: Subscriber = handler
            subscription = Subscription(
                name or owner.name,
                owner.handle,
                types=types if types is not None else owner.types,
                every=every if every is not None else owner.every,
                nested=owner.nested if nested is None else nested,
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
                name or str(getattr(handler, "__qualname__", repr(handler))),
                handler,
                types=types,
                every=every,
                nested=bool(nested) if nested is None or isinstance(nested, bool) else nested,
                policy=policy or Subscriber.policy,
                maxsize=maxsize or Subscriber.maxsize,
                blocking=bool(blocking),
                host_copies=host_copies is not False,
            )
        self.attach(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                self._changed()
        subscription.mailbox.close()

    def attach(self, subscription: Subscription) -> None:
        """Route events to ``subscription`` (made by :meth:`subscribe` or a stream)."""
        with self._lock:
            self._subscriptions.append(subscription)
            self._changed()

    def _changed(self) -> None:
        self._routes = {}
        self._takes_nested = any(s.filter.nested for s in self._subscriptions)
        Bus.routes_changed()

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subscriptions)

    def consumers(self) -> list[Subscription]:
        """Subscriptions with a handler to run (streams consume themselves)."""
        return [s for s in self._subscriptions if s.handler is not None and not s.failed]

    def stream(
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
        """Iterate over events as they are published (``async for event in
        bus.stream(...)``).

        Ends after the run's :class:`RunFinished`/:class:`RunFailed` when
        ``until_run_end`` (the default). The default policy never slows training.
        CUDA tensors arrive as host copies unless ``host_copies=False``; events of
        nested runs only with ``nested`` (True, or the sources to receive).
        """
        subscription = Subscription(
            "stream", None, types=types, every=every, nested=nested, policy=policy, maxsize=maxsize
        )
        return self.delivery.stream(subscription, until_run_end, host_copies)

    def _route(self, event_type: type[Event], nested: bool = False) -> tuple[Subscription, ...]:
        key = (event_type, nested)
        route = self._routes.get(key)
        if route is None:
            route = tuple(
                s
                for s in self._subscriptions
                if s.filter.accepts(event_type) and (not nested or s.filter.nested)
            )
            self._routes[key] = route
        return route

    # -- nesting --------------------------------------------------------------------
    def link(self, parent: Bus) -> None:
        """Forward this bus's events to ``parent`` (a nested run's bus to the outer
        run's) and let the outer run's flushes wake this bus's consumers."""
        self._parent = parent
        self._hub = parent._hub

    def unlink(self) -> None:
        self._parent = None
        self._hub = self

    # -- producer side --------------------------------------------------------------
    def listening(self, source: str = "") -> bool:
        """Whether any subscription could receive an event published here now (from
        the nested run ``source``, when this bus is linked to an outer one's)."""
        if self.muted:
            return False
        if self._subscriptions:
            return True
        parent = self._parent
        while parent is not None:
            if parent._takes_nested:
                if any(s.filter.takes_source(source) for s in parent._subscriptions):
                    return True
            parent = parent._parent
        return False

    def wants(self, event_type: type[Event], iters: int = 0, source: str = "") -> bool:
        """Whether any live subscription would receive this step's event of that type.

        Lets the training thread skip building events nobody listens to.
        """
        return due(self.gate(event_type, source), iters)

    def gate(self, event_type: type[Event], source: str = "") -> StepGate:
        """The periods of the live subscriptions that would receive an event of that
        type published here (by the nested run ``source``): ``due(gate, iters)`` says
        whether step ``iters``'s is wanted. Cached until :attr:`revision` changes, so
        that the training loop asks once, not every step."""
        if self._gates_revision != Bus.revision:
            self._gates = {}
            self._gates_revision = Bus.revision
        key = (event_type, source, *self._ancestors())
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = self._periods(event_type, source)
        return gate

    def _ancestors(self) -> tuple[Bus, ...]:
        """The buses this one is linked to, nearest first."""
        chain = []
        parent = self._parent
        while parent is not None:
            chain.append(parent)
            parent = parent._parent
        return tuple(chain)

    def _periods(self, event_type: type[Event], source: str) -> StepGate:
        if self.muted:
            return ()
        periods = {s.filter.every or 1 for s in self._route(event_type) if not s.failed}
        parent = self._parent
        while parent is not None:
            if parent._takes_nested:
                periods.update(
                    s.filter.every or 1
                    for s in parent._route(event_type, True)
                    if not s.failed and s.filter.takes_source(source)
                )
            parent = parent._parent
        return (1,) if 1 in periods else tuple(sorted(periods))

    def publish(self, event: Event) -> None:
        """Queue ``event`` for every interested subscription. Never blocks the event loop."""
        if self.muted:
            return
        may_block = threading.get_ident() != self._hub._loop_thread
        self._put(self._route(type(event)), event, may_block, nested=False)
        parent = self._parent
        while parent is not None:
            if parent._takes_nested:
                parent._put(parent._route(type(event), True), event, may_block, nested=True)
            parent = parent._parent

    def _put(
        self, route: tuple[Subscription, ...], event: Event, may_block: bool, nested: bool
    ) -> None:
        if not route:
            return
        iters = getattr(event, "iters", 0)
        per_step = not isinstance(event, LIFECYCLE_EVENTS)
        for subscription in route:
            wanted = subscription.filter
            if subscription.failed or (per_step and not wanted.takes_step(iters)):
                continue
            if nested and not wanted.takes_source(event.source):
                continue
            if subscription.put(event, may_block, self.flush, self._gives_up):
                hub = self._hub
                with hub._wake_lock:  # a consumer's thread may publish too (drop reports)
                    hub._to_wake.append(subscription)

    def _gives_up(self, subscription: Subscription) -> bool:
        """Called while the training thread waits for room in a lossless subscriber:
        True (stop waiting, abandon it) once the run was asked to stop and the
        subscriber has taken nothing for ``stall_s`` seconds; meanwhile the wait is
        reported every 10 s."""
        stalled = time.monotonic() - subscription.mailbox.last_take
        if stalled >= subscription.next_stall_report:
            subscription.next_stall_report = stalled + 10.0
            log.warning(
                "training waits for %s: it has taken no event for %.0f s",
                subscription.name,
                stalled,
            )
        if self._hub.stop_requested() and stalled >= self.stall_s:
            self.delivery.abandon(
                subscription,
                f"took no event for {stalled:.0f} s while the run was stopping: abandoned",
            )
            return True
        return False

    def flush(self, force: bool = False) -> None:
        """Wake the consumers that got events since the last wake-up: one call per loop,
        at most once per ``wake_interval`` unless ``force``.

        Every cross-thread wake-up costs the training thread a GIL hand-over, so the
        training loop calls this each step and consumers are woken at most 50 times a
        second; epoch and run ends, and a full lossless buffer, force it.
        """
        hub = self._hub
        if not hub._to_wake:
            return
        now = time.monotonic()
        if not force and now - hub._last_wake < hub.wake_interval:
            return
        hub._last_wake = now
        with hub._wake_lock:
            pending, hub._to_wake = hub._to_wake, []
        by_waker: dict[Waker, list[Mailbox[Event]]] = {}
        for subscription in pending:
            mailbox = subscription.mailbox
            if mailbox.waker is not None:
                by_waker.setdefault(mailbox.waker, []).append(mailbox)
        for waker, mailboxes in by_waker.items():
            waker.call(functools.partial(_wake_all, mailboxes))

    def bind(self) -> None:
        """Record the calling thread as the event loop's (called by a run's lifecycle)."""
        self._loop_thread = threading.get_ident()


def _wake_all(mailboxes: list[Mailbox[Event]]) -> None:
    for mailbox in mailboxes:
        mailbox.wake()
