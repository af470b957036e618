"""Clients of a serving recipe: an async event iterator, and attached loggers."""

from __future__ import annotations

import contextlib
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import anyio
import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidMessage, InvalidStatus

from ..bus import Subscriber
from ..consumers import maybe_await
from ..control import CommandError
from ..events import CommandApplied, Event, ProfileReport, RunFailed, RunFinished
from ..mailbox import Filter
from .protocol import PROTOCOL_VERSION, CommandResult, Hello, History, Status, decoder
from .protocol import Command as CommandMessage

__all__ = ["subscribe", "attach", "RunEnded", "control", "Controller", "NotAServer"]

GREETING_TIMEOUT_S = 10.0
"""How long a client waits for the server's first frame (its ``hello``)."""


class NotAServer(Exception):
    """The address answers websockets but is not a recipe served by ``serve()`` (or
    speaks another version of its protocol)."""


def _ws_url(
    url: str, token: str | None, fmt: str, types: Iterable[str] | None, every: int | None
) -> str:
    if "://" not in url:
        url = "ws://" + url  # HOST:PORT
    parts = urllib.parse.urlsplit(url)
    try:
        valid = parts.port is not None or parts.hostname is not None
    except ValueError:  # a port that is no number
        valid = False
    host = parts.hostname or ""
    if (
        not valid
        or parts.scheme not in ("ws", "wss", "http", "https")
        or not host
        or any(c.isspace() for c in url)
    ):
        raise ValueError(
            f"not a server address: {url!r} (expected ws://HOST:PORT, http://HOST:PORT "
            "or HOST:PORT, as printed by serve())"
        )
    if parts.scheme in ("http", "https"):
        parts = parts._replace(scheme="ws" if parts.scheme == "http" else "wss")
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["format"] = fmt
    if token:
        query["token"] = token
    if types is not None:
        query["types"] = ",".join(types)
    if every is not None:
        query["every"] = str(every)
    return urllib.parse.urlunsplit(parts._replace(path="/ws", query=urllib.parse.urlencode(query)))


async def subscribe(
    url: str,
    *,
    token: str | None = None,
    types: Iterable[type[Event] | str] | None = None,
    every: int | None = None,
    until_run_end: bool = False,
    with_status: bool = False,
) -> AsyncIterator[Any]:
    """``async for event in subscribe('ws://host:port', token=...)``: the run's events
    (decoded into :mod:`evloop.events` types, MessagePack on the wire).

    ``types`` filters by class or tag, ``every`` thins per-step events. With
    ``until_run_end`` it stops after the run's end; ``with_status`` also yields the
    ``hello``/``history``/``status`` messages.
    """
    tags = (
        None
        if types is None
        else [t if isinstance(t, str) else str(t.__struct_config__.tag) for t in types]
    )
    decode = decoder("msgpack").decode
    async with connect(
        _ws_url(url, token, "msgpack", tags, every), max_size=None, compression=None
    ) as ws:
        async for messages in _decoded_frames(ws, url, decode):
            for message in messages:
                if isinstance(message, Hello | History | Status):
                    if with_status:
                        yield message
                    continue
                yield message
                if until_run_end and isinstance(message, RunFinished | RunFailed):
                    return


async def _greeting(ws: Any, url: str, decode: Any) -> list[Any]:
    """The server's first frame, decoded: a ``hello`` first, within
    :data:`GREETING_TIMEOUT_S` (a server that accepts and stays silent is not one of
    ours, or is frozen: waiting on it would hang the client)."""
    try:
        with anyio.fail_after(GREETING_TIMEOUT_S):
            frame = await ws.recv()
    except TimeoutError:
        raise TimeoutError(
            f"{url} sent no hello within {GREETING_TIMEOUT_S:g} s (is it a recipe's "
            "serve() address, and is that process running?)"
        ) from None
    if isinstance(frame, str):
        raise NotAServer(f"{url} is not an evloop server: its first frame is text {frame[:80]!r}")
    try:
        messages = decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise NotAServer(f"{url} is not an evloop server: its first frame is {error}") from None
    hello = messages[0] if messages else None
    if not isinstance(hello, Hello):
        raise NotAServer(f"{url} is not an evloop server: its first frame has no hello")
    if hello.protocol != PROTOCOL_VERSION:
        raise NotAServer(
            f"{url} speaks evloop protocol {hello.protocol}, this client {PROTOCOL_VERSION}: "
            "use the same evloop version on both sides"
        )
    return list(messages)


async def _decoded_frames(ws: Any, url: str, decode: Any) -> AsyncIterator[list[Any]]:
    """The connection's frames, decoded, the first checked by :func:`_greeting`."""
    yield await _greeting(ws, url, decode)
    async for frame in ws:
        try:
            yield decode(frame)
        except msgspec.DecodeError as error:
            raise NotAServer(f"{url} sent a frame that does not decode: {error}") from None


def unreachable(url: str, error: BaseException) -> str:
    """Why ``url`` could not be followed, naming it once (a missing hello's error
    names it already)."""
    said = str(error)
    return said if url in said else f"cannot reach {url}: {said}"


class RunEnded(Exception):
    """Why :func:`attach` stopped before the run finished, with the exit code a
    command reports for it."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def attach(
    url: str,
    callbacks: Sequence[Subscriber],
    *,
    token: str | None = None,
    until_run_end: bool = True,
    retry_for: float = 60.0,
) -> Event | None:
    """Run loggers (``StdoutLogger``, ``JsonlWriter``, ``VisdomLogger``…) in this process
    on the events of a recipe served elsewhere; returns the run's end (``RunFinished``).

    A server that goes away is reconnected to, with a growing pause, for up to
    ``retry_for`` seconds; events published meanwhile are missed. Raises
    :class:`RunEnded` when the run failed, the server refused the connection (a wrong
    token) or stayed away. A logger that raises is dropped (and reported on stderr);
    the run is never affected.
    """
    live = {callback: Filter.of(callback.types, callback.every) for callback in callbacks}
    pause, away_since = 0.5, None
    try:
        while True:
            try:
                end = await _follow(url, token, live, until_run_end)
                if end is not None or not until_run_end:
                    return _outcome(end)
                reason = "the server closed the connection before the run ended"
            except InvalidStatus as refused:
                status = refused.response.status_code
                body = refused.response.body.decode(errors="replace").strip()
                raise RunEnded(f"{url} refused the connection: HTTP {status} {body}") from None
            except NotAServer as error:
                raise RunEnded(str(error)) from None
            except (OSError, ConnectionClosedError, InvalidMessage) as error:
                reason = unreachable(url, error)
            away_since = away_since or time.monotonic()
            if time.monotonic() - away_since >= retry_for:
                raise RunEnded(f"{reason}; gave up after {retry_for:.0f} s") from None
            print(f"evloop attach: {reason}; retrying in {pause:.1f} s", file=sys.stderr)
            await anyio.sleep(pause)
            pause = min(2 * pause, 5.0)
    finally:
        for callback in live:
            await maybe_await(callback.finish())


async def _follow(
    url: str, token: str | None, live: dict[Subscriber, Filter], until_run_end: bool
) -> Event | None:
    """One connection: deliver its events until the run ends (returned) or the
    connection closes (None)."""
    async for event in subscribe(url, token=token, until_run_end=until_run_end):
        for callback, wanted in list(live.items()):
            if not wanted.wants(event):
                continue
            try:
                await maybe_await(callback.handle(event))
                await maybe_await(callback.flush())
            except Exception as error:
                print(
                    f"evloop attach: {callback.name} failed and was detached: {error!r}",
                    file=sys.stderr,
                )
                del live[callback]
        if isinstance(event, RunFinished | RunFailed) and not event.source:
            return event
    return None


def _outcome(end: Event | None) -> Event | None:
    if isinstance(end, RunFailed):
        raise RunEnded(f"the run failed at iteration {end.iters}: {end.error}")
    return end


class Controller:
    """A connection that steers a served recipe (``evloop.remote.control``). Each
    method sends a command and returns the ``command_applied`` event once the training
    thread applied it (``set`` returns its ``changes``: name → ``[old, new]``); a
    refused command or one that failed raises :class:`~evloop.control.CommandError`."""

    def __init__(self, ws: Any, timeout: float) -> None:
        self._ws, self.timeout = ws, timeout
        self._decode = decoder("msgpack").decode
        self.settings: dict[str, Any] = {}
        """The recipe's settings as of the last command."""

    async def pause(self) -> CommandApplied:
        """Pause the run at its next step boundary."""
        return await self.send("pause")

    async def resume(self) -> CommandApplied:
        """Resume a paused run."""
        return await self.send("resume")

    async def stop(self) -> CommandApplied:
        """End the run at its next step boundary, as one Ctrl-C does."""
        return await self.send("stop")

    async def checkpoint(self) -> CommandApplied:
        """Save a checkpoint at the next step boundary (the recipe's ``Checkpoint``)."""
        return await self.send("checkpoint")

    async def evaluate(self) -> CommandApplied:
        """Evaluate at the next step boundary (the recipe's ``CallRecipe``)."""
        return await self.send("eval")

    async def set(self, **values: Any) -> CommandApplied:
        """Set steerable settings (``lr=1e-4``, ``momentum=0.9``…) at the next step
        boundary, all or none: a value out of its range refuses the whole command."""
        return await self.send("set", values)

    async def profile(self, steps: int = 20, ranks: str = "main") -> ProfileReport:
        """Profile the next ``steps`` steps (on rank 0, or ``ranks='all'``); returns the
        report once the trace is written (``path`` in the run folder). Refused while a
        profile runs; a profile that failed raises CommandError."""
        ident = uuid.uuid4().hex
        await self.send("profile", {"steps": steps, "ranks": ranks}, ident=ident)
        with anyio.fail_after(self.timeout):
            while True:
                for message in self._decode(await self._ws.recv()):
                    if isinstance(message, ProfileReport) and message.id == ident:
                        if not message.ok and not message.path:
                            raise CommandError(f"the profile failed: {message.error}")
                        return message

    async def send(
        self, op: str, values: dict[str, Any] | None = None, *, ident: str = ""
    ) -> CommandApplied:
        """Send the command ``op`` with ``values``; returns once the run applied it
        (at most ``timeout`` seconds). Raises CommandError when it was refused, failed
        or cannot be encoded."""
        ident = ident or uuid.uuid4().hex
        command = CommandMessage(op=op, values=values or {}, id=ident)
        try:
            data = msgspec.msgpack.encode(command)
        except (TypeError, OverflowError) as error:  # the wire has no such value
            raise CommandError(f"{op} {values} cannot be sent: {error}") from None
        await self._ws.send(data)
        with anyio.fail_after(self.timeout):
            while True:
                for message in self._decode(await self._ws.recv()):
                    if isinstance(message, CommandResult) and message.id == ident:
                        if not message.ok:
                            raise CommandError(message.error or f"{op} was refused")
                        self.settings = dict(message.settings)
                    elif isinstance(message, CommandApplied) and message.id == ident:
                        if not message.ok:
                            raise CommandError(message.error or f"{op} failed")
                        return message


@contextlib.asynccontextmanager
async def control(
    url: str, token: str | None = None, timeout: float = 60.0
) -> AsyncIterator[Controller]:
    """``async with evloop.remote.control(url, token) as run: await run.set(lr=1e-4)``;
    ``token``: the control token the recipe was served with. A command not applied
    within ``timeout`` seconds (the recipe is not running) is a TimeoutError."""
    address = _ws_url(url, token, "msgpack", ["command_applied", "profile_report"], None)
    async with connect(address, max_size=None, compression=None) as ws:
        hello = (await _greeting(ws, url, decoder("msgpack").decode))[0]
        if not hello.control:
            raise CommandError(
                "this connection may only watch: give the control token the recipe was "
                "served with (serve(..., control_token=...))"
            )
        yield Controller(ws, timeout)
