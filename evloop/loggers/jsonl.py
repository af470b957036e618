"""JsonlWriter: a lossless event log, one JSON event per line."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import IO

from ..bus import Subscriber
from ..events import Event, encode_json

__all__ = ["JsonlWriter"]


class JsonlWriter(Subscriber):
    """Appends every event (or those of ``types``) to ``path`` as JSON lines.

    Lossless (``block`` policy). Its buffer holds ``maxsize`` = 10,000 events: about
    10 MB of small events, several seconds of even a fast training loop, so a slow disk
    only makes training wait when it stays slow that long. Writing and the host copy of
    tensor metrics run in a worker thread.
    """

    policy = "block"
    maxsize = 10_000
    blocking = True

    def __init__(self, path: str | os.PathLike[str], types: Iterable[type[Event]] | None = None):
        self.path = os.fspath(path)
        self.types = tuple(types) if types is not None else None
        self._file: IO[bytes] | None = None

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
        self._file.write(encode_json(event) + b"\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
