"""A run served by its own process (``recipe.serve()``), followed by ``evloop serve``
over its websocket: its series (the server's decimated history, then each event it
sends) and its status, listed and overlaid beside the recorded runs."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import urllib.parse
from typing import Any

from websockets.exceptions import ConnectionClosedError, InvalidMessage, InvalidStatus

from .client import NotAServer, subscribe, unreachable
from .protocol import Hello, History, Status
from .runlog import EventLine, SeriesTable

__all__ = ["FollowedRun", "is_server_address"]

log = logging.getLogger("evloop")
RETRY_S = (0.5, 5.0)  # the pause before reconnecting: first, longest


def is_server_address(path: str) -> bool:
    return path.startswith(("ws://", "wss://", "http://", "https://"))


class FollowedRun(SeriesTable):
    """``FollowedRun(url, lock).start()``: ``url`` as ``serve()`` printed it (its
    ``?token=`` included). Its series change under ``lock``; it reconnects, with a
    growing pause, while the server is away, until :meth:`close`."""

    loaded = True  # nothing to read: updates arrive by themselves

    def __init__(self, url: str, lock: threading.Lock) -> None:
        super().__init__()
        parts = urllib.parse.urlsplit(url)
        self.token = dict(urllib.parse.parse_qsl(parts.query)).get("token")
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        self.page = urllib.parse.urlunsplit(parts._replace(scheme=scheme, path="/", query=""))
        self.address = urllib.parse.urlunsplit(parts._replace(query=""))
        self.name = parts.netloc
        self.status = Status()
        self.error: str | None = None
        self._lock = lock
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._main, name="evloop-follow", daemon=True)

    def start(self) -> FollowedRun:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()

    def refresh(self) -> bool:
        return False

    def summary(self) -> dict[str, Any]:
        status = self.status
        ended = status.state in ("finished", "stopped", "failed")
        duration = status.duration_s
        if duration is None and status.started is not None and status.state == "running":
            duration = time.time() - status.started
        return {
            "name": self.name,
            "status": status.state if self.error is None or ended else "unreachable",
            "error": status.error or self.error,
            "start": status.started,
            "duration": duration,
            "hparams": status.hparams,
            "epoch": status.epoch,
            "iters": status.iters,
            "evaluation": self._last_evaluation(),
            "series": sorted(self.columns),
            "followed": self.address,
        }

    def _last_evaluation(self) -> dict[str, float]:
        return {
            name: column.values[-1]
            for name, column in self.columns.items()
            if len(column) and not name.startswith(("train/", "system/"))
        }

    # -- the connection (a thread of its own) -------------------------------------------
    def _main(self) -> None:
        pause = RETRY_S[0]
        while not self._closed.is_set():
            try:
                asyncio.run(self._follow())
                pause = RETRY_S[0]
            except InvalidStatus as refused:
                self.error = f"refused: HTTP {refused.response.status_code}"
            except (OSError, ConnectionClosedError, InvalidMessage, TimeoutError) as error:
                self.error = unreachable(self.address, error)
            except NotAServer as error:  # retried: a recipe may be served there later
                self.error = str(error)
            except Exception as error:  # whatever the address answers, it is retried
                if self.error is None:
                    log.warning("following %s: %r", self.address, error)
                self.error = f"{type(error).__name__}: {error}"
            self._closed.wait(pause)
            pause = min(2 * pause, RETRY_S[1])

    async def _follow(self) -> None:
        async for message in subscribe(self.address, token=self.token, with_status=True):
            with self._lock:
                self.error = None
                self._take_message(message)
            if self._closed.is_set():
                return

    def _take_message(self, message: Any) -> None:
        if isinstance(message, Hello):
            self.name = f"{message.name}@{urllib.parse.urlsplit(self.address).netloc}"
        elif isinstance(message, Status):
            self._take_status(message)
        elif isinstance(message, History):
            self._take_status(message.status)
            for name, points in message.series.items():
                source, _, key = name.partition("/")
                column = self.column(source, key)
                for step, value in points:  # no times: on the wall-time axis from now on
                    column.add(step, math.nan, value)
        else:
            self.take(EventLine.of(message))

    def _take_status(self, status: Status) -> None:
        self.status = status
        self.batches_per_epoch = status.batches_per_epoch or self.batches_per_epoch
        if self.started is None and status.started is not None:
            self.started = status.started
