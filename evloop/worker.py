"""DaemonWorker: one daemon thread that runs the calls handed to it, in order, and
ends when it has nothing to do (used by blocking subscribers and evaluations).

A call's function and arguments are dropped *before* whoever waits for it is told it
ended: a waiter may go on to end the process, and a tensor freed in a daemon thread
while the interpreter shuts down aborts it ("terminate called without an active
exception"), so the last reference to what a call used must not be the worker's.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio

from .mailbox import Waker

__all__ = ["DaemonWorker", "WORKER_IDLE_S"]

WORKER_IDLE_S = 5.0  # the thread ends after this long without a call
log = logging.getLogger("evloop")


class _Call(NamedTuple):
    fn: Callable[..., object]
    args: tuple[Any, ...]
    done: Callable[[], None] | None


class DaemonWorker:
    """One daemon thread running the calls it is given, one at a time; awaiting a
    call's result never blocks the event loop. The thread ends after ``WORKER_IDLE_S``
    without a call (a recipe's subscribers would otherwise keep one thread each for
    the life of the process) and starts again with the next one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._lock = threading.Lock()  # between a call handed over and the thread ending
        self._thread: threading.Thread | None = None

    def submit(
        self, fn: Callable[..., object], *args: Any, done: Callable[[], None] | None = None
    ) -> None:
        """Run ``fn(*args)`` in the thread, after the calls before it; returns at once.

        ``done()`` runs in the thread once the call ended (raised or not) and the thread
        holds neither ``fn`` nor ``args`` any more. An exception ``fn`` lets out is
        logged; the thread goes on with the next call.
        """
        with self._lock:
            self._calls.put(_Call(fn, args, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
                self._thread.start()

    def _main(self) -> None:
        while True:
            try:
                fn, args, done = self._calls.get(timeout=WORKER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._calls.empty():
                        self._thread = None
                        return
                continue
            try:
                fn(*args)
            except Exception:  # logged as text: a record keeping the traceback keeps args
                log.error("%s: a call raised\n%s", self.name, traceback.format_exc())
            finally:
                del fn, args
                if done is not None:
                    done()
                del done

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the thread, awaited without blocking the event loop; its
        value, or its exception raised here."""
        finished = anyio.Event()
        waker = Waker.current()
        outcome: dict[str, Any] = {}
        self.submit(_into, outcome, fn, *args, done=lambda: waker.call(finished.set))
        await finished.wait()
        if "error" in outcome:
            raise outcome.pop("error")
        return outcome.pop("value", None)


def _into(outcome: dict[str, Any], fn: Callable[..., Any], *args: Any) -> None:
    try:
        outcome["value"] = fn(*args)
    except BaseException as error:  # raised in the awaiting task
        outcome["error"] = error
