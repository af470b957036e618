"""The thread a ``CallRecipe``'s concurrent evaluations run in, one at a time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..worker import DaemonWorker

__all__ = ["EvaluationThread", "WAIT_REPORT_S"]

WAIT_REPORT_S = 30.0  # how often a wait for an evaluation says what it waits for
log = logging.getLogger("evloop")


class EvaluationThread:
    """Where the run's concurrent evaluations run: one at a time, in a
    :class:`~evloop.worker.DaemonWorker`, with whether one is in progress."""

    def __init__(self, name: str) -> None:
        self._thread = DaemonWorker(name)
        self._idle = threading.Event()
        self._idle.set()
        self._started = 0.0

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        self._idle.clear()
        self._started = time.monotonic()
        self._thread.submit(job, *args, done=self._idle.set)

    def wait(self, what: str, timeout_s: float | None = None) -> bool:
        """Until the evaluation in progress is done (True), or ``timeout_s`` passed
        (False); saying every 30 s what it waits for."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = WAIT_REPORT_S if deadline is None else deadline - time.monotonic()
            if self._idle.wait(max(0.0, min(WAIT_REPORT_S, left))):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            log.warning(
                "waiting for %s, running for %.0f s", what, time.monotonic() - self._started
            )
