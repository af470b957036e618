"""Runs outlive their process: a run folder's event log served as the live run was.

``evloop serve RUN_DIR`` reads ``events.jsonl`` (and the media beside it) into a
server's history, so the page shows the run's charts, reports and status as it did
live, with nothing running.
"""

from __future__ import annotations

import html
import logging
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from ..bus import Bus
from ..events import Event, decode_json
from ..kinds import Kind
from .runlog import EVENT_LOG
from .server import Server

__all__ = ["read_events", "serve_folder"]

log = logging.getLogger("evloop")


def read_events(folder: Path, token: str | None = None) -> Iterator[Event]:
    """The folder's events in order, media references made into HTML the page shows
    (images fetched from the server's ``/media/``). A line that does not decode (a
    torn write) is skipped with a warning."""
    query = f"?token={urllib.parse.quote(token)}" if token else ""
    with open(folder / EVENT_LOG, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                event = decode_json(line)
            except msgspec.DecodeError as error:
                log.warning("%s line %d skipped: %s", folder / EVENT_LOG, number, error)
                continue
            metrics = getattr(event, "metrics", None)
            if metrics:
                kinds = dict(getattr(event, "kinds", {}))
                resolved = {k: _resolve(folder, v, kinds, k, query) for k, v in metrics.items()}
                event = msgspec.structs.replace(event, metrics=resolved, kinds=kinds)
            yield event


def _resolve(folder: Path, value: Any, kinds: dict[str, str], key: str, query: str) -> Any:
    if not (isinstance(value, dict) and set(value) == {"$media"}):
        return value
    name = str(value["$media"])
    kinds[key] = Kind.HTML
    if name.endswith(".html"):
        path = (folder / name).resolve()
        if folder.resolve() in path.parents and path.is_file():
            return path.read_text(errors="replace")
        return f"<p>missing: {html.escape(name)}</p>"
    src = html.escape(f"/{name}{query}", quote=True)
    return f'<img src="{src}" style="width:256px;max-width:100%;image-rendering:pixelated">'


def serve_folder(
    folder: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None, **options: Any
) -> Server:
    """A server showing the run of ``folder`` (its page, history and media)."""
    server = Server(Bus(), host, port, token, name=folder.name, media_root=folder, **options)
    server.start()
    server.replay(read_events(folder, server.token))
    return server
