"""JsonlWriter: a lossless event log, one JSON event per line, media beside it.

The format is documented in ``docs/event-log.md``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import IO, Any

import msgspec

from ..bus import Subscriber
from ..events import ANY_EVENT, BatchStarted, Event, SubscriberDropped, encode_json
from ..kinds import DIMENSIONS, IMAGE_KINDS, Kind, kind_in
from ..reports import picture, png_bytes

__all__ = ["JsonlWriter", "MEDIA_DIR"]

MEDIA_DIR = "media"


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
    ) -> None:
        self.path = os.fspath(path)
        if types is None:
            left_out: set[type[Event]] = set()
            if not batch_starts:
                left_out.add(BatchStarted)
            if not drops:
                left_out.add(SubscriberDropped)
            types = [t for t in ANY_EVENT.__args__ if t not in left_out]
        self.types = tuple(types)
        self.media = media
        self._file: IO[bytes] | None = None
        self._written: set[str] = set()  # media files known to exist

    @property
    def name(self) -> str:
        return f"JsonlWriter[{self.path}]"

    @property
    def state_key(self) -> str:
        return self.name

    def handle(self, event: Event) -> None:
        if self._file is None:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across events
        metrics = getattr(event, "metrics", None)
        if self.media and metrics:
            event = msgspec.structs.replace(
                event, metrics=self._with_media(metrics, getattr(event, "kinds", {}))
            )
        self._file.write(encode_json(event) + b"\n")

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

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
