"""Accepting connections, with a way out as cheap as a refusal can be: a connection
from an address that went over its budgets is closed as soon as it is accepted,
before asyncio makes a transport, a protocol and a task of it (about half a
millisecond of the server's thread each: a client reconnecting as fast as it can
would take most of the interpreter from training), in a few microseconds.

asyncio has no public hook there: this takes over the reading of the server's
listening sockets and hands the connections it keeps to the server's own protocol
factory through :meth:`~asyncio.loop.connect_accepted_socket`. The factory is
``asyncio.Server._protocol_factory``, checked, not assumed: without it connections
are accepted as before (and refused later, at more cost).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["AcceptFilter"]

log = logging.getLogger("evloop")
ACCEPTS_PER_WAKEUP = 100
PAUSE_S = 1.0  # out of descriptors: stop accepting for this long (as asyncio does)
FLOOD_PAUSE_S = 0.02
"""After dropping connections, accepting waits this long: a flood's connections are
then taken in batches, not each with a wake-up of the server's thread (which costs
training more than the drop itself); others wait 20 ms at most."""
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a reset, nothing kept


class AcceptFilter:
    """``AcceptFilter(server, drops).start()``: ``drops(address)`` says whether a
    connection from ``address`` is closed unanswered; :attr:`dropped` counts them.
    :meth:`close` before the server closes."""

    def __init__(self, server: asyncio.Server, drops: Callable[[str], bool]) -> None:
        self.server, self.drops = server, drops
        self.dropped = 0
        self._listening: list[socket.socket] = []
        self._handing_over: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()

    def start(self) -> bool:
        """Take over accepting; False (nothing changed) where asyncio lacks what it
        needs."""
        factory = getattr(self.server, "_protocol_factory", None)
        if not callable(factory) or not self.server.sockets:
            return False
        self._factory = factory
        for listening in self.server.sockets:
            if not self._loop.remove_reader(listening.fileno()):
                continue  # not read by the loop: not ours to take over
            own = socket.socket(fileno=os.dup(listening.fileno()))
            own.setblocking(False)
            self._listening.append(own)
            self._loop.add_reader(own.fileno(), self._accept, own)
        return bool(self._listening)

    def close(self) -> None:
        for own in self._listening:
            self._loop.remove_reader(own.fileno())
            own.close()
        self._listening = []

    def _accept(self, listening: socket.socket) -> None:
        dropped = self.dropped
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                connection, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                if error.errno == errno.ECONNABORTED:
                    continue
                self._pause(listening, PAUSE_S)
                log.warning("accepting connections paused for %.0f s: %s", PAUSE_S, error)
                return
            address = peer[0] if isinstance(peer, tuple) else str(peer)
            if self.drops(address):
                self.dropped += 1
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                connection.close()
                continue
            connection.setblocking(False)
            task = self._loop.create_task(self._hand_over(connection))
            self._handing_over.add(task)
            task.add_done_callback(self._handing_over.discard)
        if self.dropped > dropped:
            self._pause(listening, FLOOD_PAUSE_S)

    async def _hand_over(self, connection: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, connection)
        except OSError:  # the client went meanwhile
            connection.close()

    def _pause(self, listening: socket.socket, seconds: float) -> None:
        self._loop.remove_reader(listening.fileno())

        def resume() -> None:
            if listening in self._listening:
                self._loop.add_reader(listening.fileno(), self._accept, listening)

        self._loop.call_later(seconds, resume)
