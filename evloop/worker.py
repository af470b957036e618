"""DaemonWorker: one daemon thread that runs the calls handed to it, in order, and
ends when it has nothing to do (used by blocking subscribers and evaluations)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import anyio

from .mailbox import Waker

__all__ = ["DaemonWorker", "WORKER_IDLE_S"]

WORKER_IDLE_S = 5.0  # the thread ends after this long without a call


class DaemonWorker:
    """One daemon thread running the calls it is given, one at a time; awaiting a
    call's result never blocks the event loop. The thread ends after ``WORKER_IDLE_S``
    without a call (a recipe's subscribers would otherwise keep one thread each for
    the life of the process) and starts again with the next one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # between a call handed over and the thread ending
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the thread, after the calls before it; returns at once."""
        with self._lock:
            self._jobs.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
                self._thread.start()

    def _main(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=WORKER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            job()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        done = anyio.Event()
        waker = Waker.current()
        outcome: dict[str, Any] = {}

        def job() -> None:
            try:
                outcome["value"] = fn(*args)
            except BaseException as error:  # raised in the awaiting task
                outcome["error"] = error
            finally:
                waker.call(done.set)

        self.submit(job)
        await done.wait()
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")
