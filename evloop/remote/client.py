"""Clients of a serving recipe: an async event iterator, and attached loggers."""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from websockets.asyncio.client import connect

from ..bus import Subscriber, maybe_await
from ..events import Event, RunFailed, RunFinished
from ..mailbox import Filter
from .protocol import Hello, History, Status, decoder

__all__ = ["subscribe", "attach"]


def _ws_url(
    url: str, token: str | None, fmt: str, types: Iterable[str] | None, every: int | None
) -> str:
    parts = urllib.parse.urlsplit(url)
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
        async for frame in ws:
            for message in decode(frame):
                if isinstance(message, Hello | History | Status):
                    if with_status:
                        yield message
                    continue
                yield message
                if until_run_end and isinstance(message, RunFinished | RunFailed):
                    return


async def attach(
    url: str,
    callbacks: Sequence[Subscriber],
    *,
    token: str | None = None,
    until_run_end: bool = True,
) -> None:
    """Run loggers (``StdoutLogger``, ``JsonlWriter``, ``VisdomLogger``…) in this process
    on the events of a recipe served elsewhere. A logger that raises is dropped (and
    reported on stderr); the run is never affected."""
    # Each logger filters as it would on the recipe's own bus.
    live = {callback: Filter.of(callback.types, callback.every) for callback in callbacks}
    try:
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
    finally:
        for callback in live:
            await maybe_await(callback.finish())
