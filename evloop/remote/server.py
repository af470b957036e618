"""The websocket server: live events and the dashboard, for browsers and remote loggers.

It runs its own event loop in a daemon thread, so that one server serves a recipe
across runs, in plain scripts (where each ``run()`` has its own loop), in asyncio apps
and in trio apps (websockets' asyncio API cannot run under trio). It reads the bus
through a ``drop_oldest`` stream: it never slows training.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.asyncio.server import serve as serve_websockets
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..bus import Bus
from ..control import Controls
from ..events import (
    ANY_EVENT,
    LIFECYCLE_EVENTS,
    BatchStarted,
    Event,
    SubscriberDropped,
    SubscriberFailed,
)
from .accept import AcceptFilter
from .auth import HostCheck, bind_address, token_for
from .budgets import HANDSHAKE_BURST, ClientBudgets
from .commands import CommandDesk
from .connections import Client, Encoded, check_limits, check_port, guarded, outbox
from .gate import Gate
from .history import RunHistory
from .http import dashboard_dir, http_response
from .inbox import CLOSE_POLICY, Inbox
from .protocol import FORMATS, PROTOCOL_VERSION, Hello, client_options, encode_frame
from .status import ShownStatus
from .wire import wire_metrics

__all__ = ["Server", "dashboard_dir", "http_response"]

log = logging.getLogger("evloop")
MAX_MESSAGE = 64 * 1024  # client → server
BROADCAST_BACKLOG = 100_000  # lifecycle events kept for shared frames; older ones go
CLOSE_TIMEOUT_S = 2.0
NO_ACCEPT_FILTER = (
    "this asyncio has no Server._protocol_factory: connections over their address's "
    "budget are refused after asyncio made them, at more cost to training"
)
REPLAY_BATCH = 1000  # recorded events dispatched at once
IN_LOOP_TIMEOUT_S = 60.0


# Everything but BatchStarted, which carries nothing a client shows.
SERVED = tuple(t for t in ANY_EVENT.__args__ if t is not BatchStarted)


class Server:
    """``Server(bus, host='127.0.0.1', port=0, token=None)``, started with :meth:`start`.

    Binding anything but loopback requires a token: one is generated (and printed with
    the URL) when none is given. Browsers must come from the served page (``Origin``);
    every client must present the token when there is one. Each remote address has a
    budget of ``handshake_burst`` handshakes at once then ``handshakes_per_s``, and of
    20 messages at once then ``messages_per_s``, over all its connections
    (:mod:`evloop.remote.budgets`).
    """

    def __init__(
        self,
        bus: Bus,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        *,
        every: int | None = 10,
        name: str = "run",
        history_points: int = 2000,
        max_backlog: int = 1000,
        send_timeout: float = 10.0,
        frame_interval: float = 0.02,
        quiet: bool = False,
        allowed_hosts: Iterable[str] = (),
        max_clients: int = 256,
        messages_per_s: float = 10.0,
        handshakes_per_s: float = 5.0,
        handshake_burst: int = HANDSHAKE_BURST,
        controls: Controls | None = None,
        control_token: str | None = None,
        open_control: bool = False,
        media_root: Path | None = None,
        run_folder: Callable[[], str | None] | None = None,
    ) -> None:
        check_port(port)
        check_limits(
            every,
            {"messages_per_s": messages_per_s, "handshakes_per_s": handshakes_per_s},
            history_points=history_points,
            max_backlog=max_backlog,
            max_clients=max_clients,
            handshake_burst=handshake_burst,
        )
        host = bind_address(host)  # one spelling (and one port) for "every interface"
        token = token_for(host, token)
        self.bus, self.host, self.port, self.token = bus, host, port, token
        self.hosts = HostCheck(host, allowed_hosts)
        self.media_root = media_root  # a run folder whose media/ it serves (a replay)
        self.commands = CommandDesk(controls, host, control_token, open_control)
        self.max_clients = max_clients
        self.budgets = ClientBudgets(handshakes_per_s, handshake_burst, messages_per_s)
        self.inbox = Inbox(self.budgets, self.commands)
        self.gate = Gate(self.hosts, token, self.commands, max_clients, media_root, run_folder)
        self.every, self.name = every, name
        self.max_backlog, self.send_timeout, self.quiet = max_backlog, send_timeout, quiet
        self.frame_interval = frame_interval
        self.history = RunHistory(history_points)
        self.max_buffer = 4 * 1024 * 1024  # bytes queued on a connection before it is dropped
        self.clients: set[Client] = set()
        self.disconnected_slow = 0
        self.shown_status = ShownStatus(self.history, self.commands)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle (any thread) -------------------------------------------------------
    @property
    def url(self) -> str:
        """The dashboard's address, with the token when there is one."""
        query = f"?token={urllib.parse.quote(self.token)}" if self.token else ""
        return f"http://{self._display_host()}:{self.port}/{query}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._display_host()}:{self.port}/ws"

    def _display_host(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    def start(self) -> Server:
        self._thread = threading.Thread(target=self._thread_main, name="evloop-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if not self.quiet:
            print(f"evloop: live dashboard at {self.url}", file=sys.stderr, flush=True)
            control = self.commands.control_token
            if control:
                steer = self.url.split("?")[0] + f"?token={urllib.parse.quote(control)}"
                print(f"evloop: steer it at {steer} (keep it private)", file=sys.stderr)
        return self

    def close(self) -> None:
        """Stop serving (clients are disconnected); closing again does nothing."""
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(15)
            if self._thread.is_alive():
                log.warning("the dashboard server's thread did not stop within 15 s")

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported to start()
            self._error = error
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with serve_websockets(
            self._handle,
            self.host,
            self.port,
            process_request=self._http,
            max_size=MAX_MESSAGE,
            max_queue=16,
            close_timeout=CLOSE_TIMEOUT_S,  # a client that does not answer a close is let go
            compression=None,
            create_connection=guarded(self.budgets),
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self.accepts = AcceptFilter(server.server, self.budgets.drops)
            if not self.accepts.start():
                log.warning(NO_ACCEPT_FILTER)
            self._broadcast = outbox(BROADCAST_BACKLOG, close_on_overflow=False)
            subscribed = len(self.bus.subscriptions)
            tasks = [
                asyncio.create_task(self._pump()),
                asyncio.create_task(self._watchdog()),
                asyncio.create_task(self._broadcaster()),
            ]
            for _ in range(1000):  # ready once the feed is subscribed: no event missed
                if len(self.bus.subscriptions) > subscribed:
                    break
                await asyncio.sleep(0)
            self._ready.set()
            await self._stopping.wait()
            self.accepts.close()
            for task in tasks:
                task.cancel()
        self.clients.clear()

    # -- bus → clients ----------------------------------------------------------------
    async def _pump(self) -> None:
        async for event in self.bus.stream(
            types=SERVED,
            every=self.every,
            nested=True,  # for the health of a nested run's subscribers
            until_run_end=False,
            policy="drop_oldest",
            maxsize=10_000,
        ):
            self._dispatch(event)

    async def _watchdog(self) -> None:
        """Drop clients that stopped reading (see :meth:`Client.stuck`): a stuck client
        never holds memory, a descriptor or a task for longer than ``send_timeout``."""
        while True:
            await asyncio.sleep(min(0.5, self.send_timeout / 2))
            self._drop_stuck(asyncio.get_running_loop().time())

    def replay(self, events: Iterable[Event]) -> None:
        """Dispatch recorded events as if they had just happened (``evloop serve``):
        read here, dispatched by the server's loop a batch at a time, so that it goes
        on serving meanwhile. Whatever goes wrong is raised here."""
        batch: list[Event] = []
        for event in events:
            batch.append(event)
            if len(batch) == REPLAY_BATCH:
                self._in_loop(self._dispatch_all, batch)
                batch = []
        if batch:
            self._in_loop(self._dispatch_all, batch)

    def _dispatch_all(self, events: list[Event]) -> None:
        for event in events:
            self._dispatch(event)

    def show_state(self, state: str | None, error: str | None = None) -> None:
        """Show the run in ``state`` (with ``error``) whatever its events said, until
        called with None: a replayed run with no end recorded whose log went silent
        is "stale"."""
        self._in_loop(self._show_state, (state, error) if state is not None else None)

    def _show_state(self, shown: tuple[str, str | None] | None) -> None:
        self.shown_status.show(shown)
        for fmt in FORMATS:
            sockets = [c.ws for c in self.clients if c.joined and c.fmt == fmt]
            if sockets:
                broadcast(sockets, encode_frame(fmt, [self.shown_status.raw(fmt)]))

    def _in_loop(self, function: Callable[[Any], None], argument: Any) -> None:
        """Call ``function(argument)`` in the server's loop and wait for it (a minute
        at most); its exception is raised here."""
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the server is not running (start it first)")
        future = asyncio.run_coroutine_threadsafe(_call(function, argument), loop)
        future.result(timeout=IN_LOOP_TIMEOUT_S)

    @property
    def serving(self) -> bool:
        """Whether it was started and is not closed."""
        return self._thread is not None and self._thread.is_alive()

    def _drop_stuck(self, now: float) -> None:
        # a function of its own: no loop variable keeps a dropped client alive
        for client in list(self.clients):
            if client.stuck(now, self.send_timeout, self.max_buffer):
                self._drop_slow(client)

    def _drop_slow(self, client: Client) -> None:
        self.disconnected_slow += 1
        self.clients.discard(client)
        client.outbox.take()
        client.ws.transport.abort()  # a close handshake would wait on the stuck peer

    def _dispatch(self, event: Event) -> None:
        if event.source and not isinstance(event, SubscriberDropped | SubscriberFailed):
            return  # a nested run's own events: its results arrive as EvalFinished
        metrics = getattr(event, "metrics", None)
        wire = wire_metrics(metrics, event.kinds) if metrics is not None else None  # type: ignore[attr-defined]
        self.history.update(event, wire)
        message = event
        if wire is not None:
            message = msgspec.structs.replace(event, metrics=wire[0], kinds=wire[1])
        encoded = Encoded(message)
        key = None if isinstance(event, LIFECYCLE_EVENTS) else type(event)
        self.shown_status.changed()
        for client in list(self.clients):
            if client.joined and not client.shared and client.filter.wants(event):
                if client.outbox.put(encoded, key):
                    client.outbox.wake()
        if self._broadcast.put(encoded, key):
            self._broadcast.wake()

    async def _broadcaster(self) -> None:
        """Clients without a filter of their own share frames: each is encoded once per
        format and written to every such connection at most once per ``frame_interval``.

        A new client's first frame (the history) is written here too, right after the
        events already dispatched went to the others: its history holds exactly those
        events, and its live frames (shared or its own) start with the next one, so no
        point is lost or repeated.
        """
        while True:
            if not len(self._broadcast) and all(c.joined for c in self.clients):
                await self._broadcast.wait()
            pending = self._broadcast.take()
            for fmt in FORMATS:
                sockets = [c.ws for c in self.clients if c.shared and c.joined and c.fmt == fmt]
                if sockets and pending:
                    data = encode_frame(
                        fmt, [e.raw(fmt) for e in pending] + [self.shown_status.raw(fmt)]
                    )
                    broadcast(sockets, data)
            self._welcome_new_clients()
            await asyncio.sleep(self.frame_interval)

    def _welcome_new_clients(self) -> None:
        new = [c for c in self.clients if not c.joined]
        if not new:
            return
        history = self.shown_status.history()  # once for a crowd reconnecting
        for client in new:
            hello = Hello(
                protocol=PROTOCOL_VERSION,
                format=client.fmt,
                name=self.name,
                every=self.every,
                control=client.may_control,
            )
            frame = [Encoded(hello).raw(client.fmt), history.raw(client.fmt)]
            frame.append(self.shown_status.raw(client.fmt))
            broadcast([client.ws], encode_frame(client.fmt, frame))
            client.joined = True

    # -- HTTP: the page, its assets, and the websocket's gate ---------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return self.gate.answer(connection, request, self.port, len(self.clients))
        except Exception as error:  # a malformed request: never a 500 and a traceback
            return connection.respond(400, f"bad request: {type(error).__name__}\n")

    # -- one websocket client ---------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # set once the handshake is done
        try:
            fmt, wanted = client_options(ws.request.path)
        except ValueError as error:
            await ws.close(CLOSE_POLICY, str(error))
            return
        client = Client(ws, fmt, wanted, self.max_backlog)
        client.may_control = self.commands.may_control(ws.request)
        self.clients.add(client)
        self._broadcast.wake()  # its first frame goes out with the next shared one
        sender = asyncio.create_task(self._send_loop(client))
        try:
            await self.inbox.receive(client)
        finally:
            self.clients.discard(client)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _send_loop(self, client: Client) -> None:
        pending: list[msgspec.Raw] = []
        loop = asyncio.get_running_loop()
        try:
            while True:
                if pending:
                    frame = encode_frame(client.fmt, pending)
                    client.sending_since = loop.time()  # watched by _watchdog
                    await client.ws.send(frame)
                    client.sending_since = None
                    # at most one frame per interval: events meanwhile share the next one
                    await asyncio.sleep(self.frame_interval)
                await client.outbox.wait()
                pending = [e.raw(client.fmt) for e in client.outbox.take()]
                pending.append(self.shown_status.raw(client.fmt))
        except ConnectionClosed:
            return


async def _call(function: Callable[[Any], None], argument: Any) -> None:
    function(argument)
