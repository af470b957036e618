"""One websocket client of the server: its filter, outbox and budgets."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from websockets.asyncio.server import ServerConnection

from ..mailbox import Filter, Mailbox

__all__ = ["Client", "Encoded", "outbox", "KEEP_ALL"]

KEEP_ALL = 256  # events a client may have pending before per-step ones coalesce
MESSAGE_BURST = 20  # messages a client may send at once before its rate counts


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
        self.outbox = outbox(max_backlog, close_on_overflow=True)
        self.sending_since: float | None = None
        self.joined = False  # its first frame (hello, history) is out
        self.backlogged_since: float | None = None  # bytes it has not read since then
        self.may_control = False  # it presented the control token
        self._allowance = float(MESSAGE_BURST)
        self._counted = time.monotonic()

    def message_allowed(self, per_second: float) -> bool:
        """A token bucket over the messages it sends (``MESSAGE_BURST`` at once, then
        ``per_second``): False once it sends faster."""
        now = time.monotonic()
        self._allowance = min(MESSAGE_BURST, self._allowance + (now - self._counted) * per_second)
        self._counted = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

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
