"""JsonlWriter: a lossless event log, one JSON event per line, media beside it.

The format is documented in ``docs/event-log.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import Iterable
from typing import IO, Any

import msgspec

from ..bus import Subscriber
from ..codec import encode_json, to_builtin
from ..events import ANY_EVENT, BatchStarted, Event, SubscriberDropped
from ..kinds import DIMENSIONS, IMAGE_KINDS, Kind, kind_in
from ..reports import picture, png_bytes
from .summary import SUMMARY_EVENTS, RunSummary

__all__ = ["JsonlWriter", "MEDIA_DIR"]

log = logging.getLogger("evloop")
MEDIA_DIR = "media"


def _write_all(file: IO[bytes], data: bytes) -> None:
    """All of ``data``, or an OSError (an unbuffered write may take part of it)."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(errno.ENOSPC, "nothing more could be written")
        view = view[written:]


class JsonlWriter(Subscriber):
    """Appends events to ``path`` as JSON lines: every event type, or those of
    ``types``; per-step ``BatchStarted`` events and drop reports only when asked
    (``batch_starts``, ``drops``: they are most of a log and say little).

    Images, image grids, heatmaps and HTML reports are written once each, as files
    named by their content under ``media/`` beside the log (``media/<sha256>.png`` or
    ``.html``), and the line holds ``{"$media": "media/<name>"}`` in their place: the
    log stays small however many reports a run posts.

    Lossless (``block`` policy). Its buffer holds ``maxsize`` = 10,000 events: about
    10 MB of small events, several seconds of even a fast training loop, so a slow disk
    only makes training wait when it stays slow that long. Writing and the host copy of
    tensor metrics run in a worker thread.

    A write that fails (a full disk) keeps its lines in a backlog of at most
    ``backlog_bytes`` and tries again at each later flush: space freed in time loses
    nothing. Beyond the backlog the oldest lines are lost; the log records each gap (a
    ``subscriber_dropped`` line with how many) once writing works again, and the run's
    end says how many were lost in all (a warning, and ``events_lost`` in
    ``summary.json``).
    """

    policy = "block"
    maxsize = 10_000
    blocking = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        types: Iterable[type[Event]] | None = None,
        *,
        batch_starts: bool = False,
        drops: bool = False,
        media: bool = True,
        backlog_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.path = os.fspath(path)
        self.backlog_bytes = backlog_bytes
        if types is None:
            left_out: set[type[Event]] = set()
            if not batch_starts:
                left_out.add(BatchStarted)
            if not drops:
                left_out.add(SubscriberDropped)
            types = [t for t in ANY_EVENT.__args__ if t not in left_out]
        self.types = tuple(types)
        self.media = media
        self.lost = 0
        """Events that could not be written (a full disk), in all."""
        self._lost = 0  # since the last successful write
        self._lines: list[bytes] = []
        self._backlog: list[bytes] = []  # lines a failed write left, oldest first
        self._failing = False  # the last write failed (warned once until one works)
        self._good = 0  # the end of the last whole line written
        self._file: IO[bytes] | None = None
        self._written: set[str] = set()  # media files known to exist
        self.summary = RunSummary(os.path.dirname(self.path) or ".")
        """The run folder's ``summary.json``, kept beside the log."""

    @property
    def name(self) -> str:
        return f"JsonlWriter[{self.path}]"

    @property
    def state_key(self) -> str:
        return self.name

    def on_run_start(self, state: dict[str, Any]) -> None:
        """In the training thread, before the first step: a path that cannot be
        written fails the run now, not after training started."""
        self._open()

    def _open(self) -> IO[bytes]:
        if self._file is None:
            directory = os.path.dirname(self.path)
            try:
                if directory:
                    os.makedirs(directory, exist_ok=True)
                self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
            except OSError as error:
                raise OSError(
                    error.errno,
                    f"JsonlWriter cannot write its event log {self.path}: {error.strerror}",
                ) from error
            self._good = self._file.seek(0, os.SEEK_END)
        return self._file

    def handle(self, event: Event) -> None:
        metrics = getattr(event, "metrics", None)
        if self.media and metrics:
            event = msgspec.structs.replace(
                event, metrics=self._with_media(metrics, getattr(event, "kinds", {}))
            )
        if isinstance(event, SUMMARY_EVENTS):
            self.summary.follow(event, None if metrics is None else _scalars(metrics, event))
        self._lines.append(encode_json(event) + b"\n")

    def flush(self) -> None:
        """Write the events received since the last flush, and the backlog first, as
        whole lines: a write that fails (a full disk) is cut back to the last whole
        line and its lines kept for the next flush, up to ``backlog_bytes``; lines
        beyond that are lost, counted, and reported in the log (a
        ``subscriber_dropped`` line) once writing works again."""
        lines, self._lines = self._backlog + self._lines, []
        self._backlog = []
        if not lines:
            return
        if self._lost:
            gap = SubscriberDropped(subscriber=self.name, dropped=self._lost, total=self.lost)
            lines.insert(0, encode_json(gap) + b"\n")
        file = self._open()
        try:
            _write_all(file, b"".join(lines))
        except OSError as error:
            file.truncate(self._good)  # never a torn line
            file.seek(self._good)
            if not self._failing:
                log.warning(
                    "JsonlWriter: %s: %s; events wait (up to %d MB) until it works",
                    self.path,
                    error,
                    self.backlog_bytes // 2**20,
                )
            self._failing = True
            self._keep(lines[1:] if self._lost else lines)
            return
        self._good = file.tell()
        self._lost, self._failing = 0, False
        with contextlib.suppress(OSError):  # tried again at the next flush
            self.summary.write()

    def _keep(self, lines: list[bytes]) -> None:
        """The newest lines that fit the backlog; the older ones are lost."""
        size, kept = 0, 0
        for line in reversed(lines):
            if size + len(line) > self.backlog_bytes:
                break
            size += len(line)
            kept += 1
        lost = len(lines) - kept
        self._backlog = lines[len(lines) - kept :]
        self._lost += lost
        self.lost += lost

    def _with_media(self, metrics: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
        written = dict(metrics)
        for key, value in metrics.items():
            kind = kind_in(kinds, key, value)
            if kind is Kind.HTML:
                html = value if isinstance(value, str) else value.render()
                written[key] = {"$media": self._store(html.encode(), "html")}
            elif kind in IMAGE_KINDS:
                assert kind is not None
                data = png_bytes(picture(value, DIMENSIONS[kind]))
                written[key] = {"$media": self._store(data, "png")}
        return written

    def _store(self, data: bytes, extension: str) -> str:
        """Writes ``data`` once under its content's name; returns its relative path."""
        name = f"{MEDIA_DIR}/{hashlib.sha256(data).hexdigest()[:32]}.{extension}"
        if name not in self._written:
            path = os.path.join(os.path.dirname(self.path), name)
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                partial = path + ".partial"
                with open(partial, "wb") as file:
                    file.write(data)
                os.replace(partial, path)
            self._written.add(name)
        return name

    def finish(self) -> None:
        """The run's end: a last try at the backlog, then the count of lost events said
        (a warning, ``summary.json``'s ``events_lost``)."""
        if self._backlog:
            self.flush()
        if self._backlog:  # still no room: those are lost too
            self._lost += len(self._backlog)
            self.lost += len(self._backlog)
            self._backlog = []
        if self.lost:
            log.warning(
                "JsonlWriter: %d events were not written to %s (no room to write them)",
                self.lost,
                self.path,
            )
            self.summary.record_lost(self.lost)
            with contextlib.suppress(OSError):
                self.summary.write()
        if self._file is not None:
            self._file.close()
            self._file = None


def _scalars(metrics: dict[str, Any], event: Event) -> dict[str, Any]:
    """The numbers and texts among ``metrics``, on the host."""
    kinds = getattr(event, "kinds", {})
    return {
        k: to_builtin(v)
        for k, v in metrics.items()
        if kind_in(kinds, k, v) in (Kind.SCALAR, Kind.TEXT)
    }
