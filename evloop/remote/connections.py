"""One websocket client of the server: its filter, outbox and budgets."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode

from ..mailbox import Filter, Mailbox
from .budgets import Allowance, ClientBudgets

__all__ = [
    "Client",
    "Encoded",
    "GuardedConnection",
    "check_limits",
    "check_port",
    "outbox",
    "KEEP_ALL",
    "PINGS_GUARDED",
    "guarded",
]

KEEP_ALL = 256  # events a client may have pending before per-step ones coalesce
CONTROL_FRAMES = 20  # pings and pongs at once, then CONTROL_FRAMES_PER_S
CONTROL_FRAMES_PER_S = 10.0  # pings and pongs: a keepalive sends one every few seconds
SEND_BUFFER = 64 * 1024
"""Bytes the kernel may hold for a client (it doubles them): with its own tuning it
holds megabytes for a client that stopped reading, and the time budget only starts
once they are full."""


def check_limits(every: int | None, rates: dict[str, float], **counts: int) -> None:
    """A server's limits: ``every`` None (every step) or a count, each of ``rates``
    (name → per second) a positive finite number, each count an int of at least 1;
    else a ValueError naming the first wrong one."""
    for name, rate in rates.items():
        if isinstance(rate, bool) or not (
            isinstance(rate, int | float) and 0 < rate < float("inf")
        ):
            raise ValueError(f"{name} must be positive, got {rate!r}")
    if every is not None:
        counts = {"every": every, **counts}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int of at least 1, got {value!r}")


def check_port(port: int) -> None:
    """A TCP port to listen on: an int from 0 (any free port) to 65535; else a
    ValueError (binding would fail later, in the server's thread, less clearly)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 (any free port) to 65535, got {port!r}")


PINGS_GUARDED = callable(getattr(ServerConnection, "process_event", None))
"""Whether this websockets release still hands each frame to ``process_event``, the
method :class:`GuardedConnection` hooks (not a public API: checked, not assumed)."""
if not PINGS_GUARDED:
    logging.getLogger("evloop").warning(
        "this websockets release has no ServerConnection.process_event: clients flooding "
        "a served recipe with pings are not limited"
    )


class GuardedConnection(ServerConnection):
    """A server connection that keeps its address within its handshake budget (see
    :mod:`evloop.remote.budgets`: over it, :attr:`refusal` is the reason to answer
    429 with, or the connection is dropped as it is accepted), closes a client
    flooding it with pings or pongs (the websocket library answers each ping itself,
    before any handler sees it, so the message budget cannot count them), and whose
    kernel send buffer is small (:data:`SEND_BUFFER`): a client that stops reading is
    seen within ``send_timeout`` of its first unsent byte. Made for a server by
    :func:`guarded`."""

    budgets: ClientBudgets | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._control_frames = Allowance(CONTROL_FRAMES, CONTROL_FRAMES_PER_S)
        self._closing: asyncio.Task[None] | None = None  # held: a task nobody holds may go
        self.refusal: str | None = None
        """Why its handshake is refused (its address went over its budget)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if self.budgets is not None and peer:
            self.refusal = self.budgets.handshake(peer[0])
            if self.refusal is not None and not self.budgets.answers_refusal(peer[0]):
                self.budgets.dropped += 1
                self.transport.abort()  # nothing read, nothing answered: the cheapest no

    def process_event(self, event: Any) -> None:
        if (
            isinstance(event, Frame)
            and event.opcode in (Opcode.PING, Opcode.PONG)
            and not self._control_frames.take()
            and self._closing is None
        ):
            self._closing = asyncio.get_running_loop().create_task(
                self.close(CloseCode.POLICY_VIOLATION, "too many pings")
            )
        super().process_event(event)


def guarded(budgets: ClientBudgets) -> type[GuardedConnection]:
    """The connection class of a server with these budgets."""
    return type("GuardedConnection", (GuardedConnection,), {"budgets": budgets})


class Encoded:
    """One message, encoded at most once per format whatever the number of clients."""

    __slots__ = ("message", "_cache")

    def __init__(self, message: Any) -> None:
        self.message = message
        self._cache: dict[str, msgspec.Raw] = {}

    def raw(self, fmt: str) -> msgspec.Raw:
        cached = self._cache.get(fmt)
        if cached is None:
            encode = msgspec.msgpack.encode if fmt == "msgpack" else msgspec.json.encode
            cached = self._cache[fmt] = msgspec.Raw(encode(self.message))
        return cached


def outbox(max_backlog: int, close_on_overflow: bool) -> Mailbox[Encoded]:
    """Messages waiting for a frame: per-step events coalesce to the newest once
    ``KEEP_ALL`` are pending, lifecycle events always queue."""
    return Mailbox(
        max_backlog, "latest", coalesce_after=KEEP_ALL, close_on_overflow=close_on_overflow
    )


class Client:
    """One connection, its filter, and its own outbox (used when it has a filter);
    more than ``max_backlog`` messages pending marks it too slow."""

    def __init__(self, ws: ServerConnection, fmt: str, wanted: Filter, max_backlog: int) -> None:
        self.ws, self.fmt, self.filter = ws, fmt, wanted
        peer = ws.remote_address
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        self.outbox = outbox(max_backlog, close_on_overflow=True)
        self.sending_since: float | None = None
        self.joined = False  # its first frame (hello, history) is out
        self.backlogged_since: float | None = None  # bytes it has not read since then
        self.may_control = False  # it presented the control token

    def stuck(self, now: float, budget_s: float, max_buffer: int) -> bool:
        """Whether it stopped reading: a frame that has not left for ``budget_s``,
        bytes waiting on its connection for ``budget_s`` (a connection stuck closing
        too), more than ``max_buffer`` of them, or an outbox that overflowed."""
        waiting = self.ws.transport.get_write_buffer_size()
        if waiting == 0:
            self.backlogged_since = None
        elif self.backlogged_since is None:
            self.backlogged_since = now
        sending = self.sending_since is not None and now - self.sending_since > budget_s
        backlogged = self.backlogged_since is not None and now - self.backlogged_since > budget_s
        return sending or backlogged or waiting > max_buffer or self.too_slow

    @property
    def shared(self) -> bool:
        """No filter of its own: it gets the frames broadcast to every such client."""
        return self.filter.types is None and self.filter.every is None

    @property
    def too_slow(self) -> bool:
        return self.outbox.overflowed
