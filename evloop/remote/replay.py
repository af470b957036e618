"""Runs outlive their process: a run folder's event log served as the live run was.

``evloop serve RUN_DIR`` reads ``events.jsonl`` (and the media beside it) into a
server's history, so the page shows the run's charts, reports and status as it did
live, with nothing running. The log is followed while the page is served: lines
appended later are shown as they come, and a run with no end recorded whose log went
silent is shown "stale", as the runs list does.
"""

from __future__ import annotations

import html
import logging
import os
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from ..bus import Bus
from ..codec import decode_json
from ..events import Event, RunFailed, RunFinished, RunStarted, RunStateChanged
from ..kinds import Kind
from .contained import contained, inside
from .http import MEDIA_NAME
from .runlog import EVENT_LOG, LogTail, ended_unrecorded
from .server import Server

__all__ = ["RecordedRun", "read_events", "serve_folder"]

log = logging.getLogger("evloop")
FOLLOW_S = 2.0  # how often a served folder's log is looked at for new lines


class RecordedRun:
    """``RecordedRun(folder, token)``: :meth:`events` yields the events appended to the
    folder's log since its last call, media references made into HTML the page shows
    (images fetched from the server's ``/media/``). A line that does not decode (a
    torn write, a hostile line) is skipped; the first such is logged."""

    def __init__(self, folder: Path, token: str | None = None) -> None:
        self.folder = folder
        self.query = f"?token={urllib.parse.quote(token)}" if token else ""
        self.last_time: float | None = None
        """The time of its last event."""
        self.ended = False
        self.started: dict[str, Any] = {}  # the run's live state and process, as logged
        """Whether its log records its end (a later start undoes it: a resumed run)."""
        self.skipped = 0
        self._tail = LogTail()

    def events(self) -> Iterator[Event]:
        path = inside(self.folder, EVENT_LOG)
        if os.path.getsize(path) == self._tail.offset:
            return
        for block in self._tail.blocks(path):
            for line in block.splitlines():
                event = self._decoded(line)
                if event is not None:
                    yield event

    def _decoded(self, line: bytes) -> Event | None:
        if not line.strip():
            return None
        try:
            event = decode_json(line)
        except msgspec.DecodeError as error:
            self.skipped += 1
            if self.skipped == 1:
                log.warning("%s: a line skipped (and any later one): %s", self.folder, error)
            return None
        self.last_time = event.time
        if not event.source and isinstance(event, RunStarted | RunFinished | RunFailed):
            self.ended = not isinstance(event, RunStarted)
            if isinstance(event, RunStarted):
                self.started = {"status": "running", "pid": event.pid, "host": event.host}
        if not event.source and isinstance(event, RunStateChanged):
            self.started["status"] = event.state
        metrics = getattr(event, "metrics", None)
        if metrics:
            kinds = dict(getattr(event, "kinds", {}))
            resolved = {k: self._resolve(v, kinds, k) for k, v in metrics.items()}
            event = msgspec.structs.replace(event, metrics=resolved, kinds=kinds)
        return event

    def stale(self) -> str | None:
        """Why it is shown "stale" (see :func:`~evloop.remote.runlog.ended_unrecorded`)."""
        return None if self.ended else ended_unrecorded(self.started, self.last_time)

    def _resolve(self, value: Any, kinds: dict[str, str], key: str) -> Any:
        if not (isinstance(value, dict) and set(value) == {"$media"}):
            return value
        name = str(value["$media"])
        kinds[key] = Kind.HTML
        folder, _, file = name.partition("/")
        if folder != "media" or not MEDIA_NAME.fullmatch(file):
            return f"<p>missing: {html.escape(name[:200])}</p>"
        if file.endswith(".html"):
            path = contained(self.folder, name)
            if path is not None and path.is_file():
                return path.read_text(errors="replace")
            return f"<p>missing: {html.escape(name)}</p>"
        src = html.escape(f"/{name}{self.query}", quote=True)
        return f'<img src="{src}" style="width:256px;max-width:100%;image-rendering:pixelated">'


def read_events(folder: Path, token: str | None = None) -> Iterator[Event]:
    """The folder's events in order (see :class:`RecordedRun`)."""
    return RecordedRun(folder, token).events()


def serve_folder(
    folder: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None, **options: Any
) -> Server:
    """A server showing the run of ``folder`` (its page, history and media), following
    its log while it serves."""
    server = Server(Bus(), host, port, token, name=folder.name, media_root=folder, **options)
    server.start()
    run = RecordedRun(folder, server.token)
    try:
        server.replay(run.events())
        server.show_state(*_shown(run.stale()))
    except BaseException:
        server.close()
        raise
    threading.Thread(
        target=_follow, args=(server, run), name="evloop-replay-follow", daemon=True
    ).start()
    return server


def _follow(server: Server, run: RecordedRun) -> None:
    """New lines of the log, and the stale rule, until the server closes."""
    shown = run.stale()
    stopped = threading.Event()
    while not stopped.wait(FOLLOW_S) and server.serving:
        try:
            server.replay(run.events())
            stale = run.stale()
            if stale != shown:
                server.show_state(*_shown(stale))
                shown = stale
        except Exception as error:  # the log went away, or the server is closing
            if server.serving:
                log.warning("%s: stopped following its log: %r", run.folder, error)
            return


def _shown(stale: str | None) -> tuple[str | None, str | None]:
    return ("stale", stale) if stale is not None else (None, None)
