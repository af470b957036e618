"""The common part of loggers that write to an experiment tracker (TensorBoard,
MLflow, Weights & Biases): which events they take and how metrics are named.

Scalars are logged as ``train/<name>`` (batch and epoch ends, the iteration as step)
and ``<prefix>/<name>`` for evaluation results (``system/<name>`` for
:class:`~evloop.callbacks.SystemMetrics`' samples); the run's hyper-parameters as
the tracker's parameters or config; images, image grids, heatmaps and
HTML reports go to what the tracker offers for them. Trackers write files or talk to
servers: the handler runs in a worker thread (``blocking``), losslessly, and never
slows training unless its 10,000-event buffer fills. A logger the bus gave up on (it
raised, or a call to its tracker was stuck past the run's end) still ends its tracker
run, as failed, once that call returned.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any

from ..bus import Subscriber
from ..events import (
    BatchEnded,
    EpochEnded,
    EvalFinished,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    SystemSampled,
    scalar,
)
from ..kinds import Kind, kind_in
from .stdout import batch_every

__all__ = ["TrackingLogger"]

log = logging.getLogger("evloop")

CLOSE_AFTER_DETACH_S = 60.0
"""How long a detached logger waits for its tracker's stuck call before leaving its
tracker run open (and saying so)."""
EXIT_WAIT_S = 10.0
"""How long the process's exit waits for tracker runs still being closed."""

_closing: set[threading.Thread] = set()


class TrackingLogger(Subscriber):
    """Subclasses write: :meth:`open` (at run start), :meth:`scalars`, :meth:`media`,
    :meth:`write` (once per delivery: send what those buffered), :meth:`close` (at run
    end, with ``'finished'``, ``'stopped'`` or ``'failed'``)."""

    policy = "block"
    maxsize = 10_000
    blocking = True

    def __init__(self, log_every: int = 10) -> None:
        self.every = batch_every(log_every)
        types: list[type[Event]] = [
            RunStarted,
            EpochEnded,
            EvalFinished,
            RunFinished,
            RunFailed,
            SystemSampled,
        ]
        if self.every:
            types.append(BatchEnded)
        self.types = tuple(types)
        self._open = False
        self._calls = threading.RLock()  # held while this logger talks to its tracker

    def handle(self, event: Event) -> None:
        with self._calls:
            self._take(event)

    def flush(self) -> None:
        with self._calls:
            self.write()

    def _take(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            if not self._open:
                self.open(event)
                self._open = True
        elif isinstance(event, BatchEnded | EpochEnded):
            self._metrics(event.iters, event.metrics, event.kinds, "train")
        elif isinstance(event, EvalFinished):
            self._metrics(event.iters, event.metrics, event.kinds, event.prefix)
        elif isinstance(event, SystemSampled):
            self._metrics(event.step, event.metrics, event.kinds, "system")
        elif isinstance(event, RunFinished) and self._open:
            self.close("stopped" if event.stopped else "finished")
            self._open = False
        elif isinstance(event, RunFailed) and self._open:
            self.close("failed")
            self._open = False

    def _metrics(
        self, step: int, metrics: dict[str, Any], kinds: dict[str, str], source: str
    ) -> None:
        numbers: dict[str, float] = {}
        for key, value in metrics.items():
            kind = kind_in(kinds, key, value)
            name = self.metric_name(source, key)
            if kind is Kind.SCALAR:
                number = scalar(value)
                if number is not None:
                    numbers[name] = float(number)
            elif kind is not None:
                self.media(step, name, kind, value)
        if numbers:
            self.scalars(step, numbers)

    def metric_name(self, source: str, key: str) -> str:
        """``train/loss``, ``test/acc``, ``system/cpu``: how a metric is named."""
        return f"{source}/{key}"

    def open(self, event: RunStarted) -> None:
        """A run starts (the first one this logger sees); ``event.hparams`` holds its
        hyper-parameters."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def media(self, step: int, name: str, kind: Kind, value: Any) -> None:
        """An image, grid, heatmap, report or text; skipped unless overridden."""

    def write(self) -> None:
        """Send what :meth:`scalars` and :meth:`media` buffered since the last call."""

    def close(self, status: str) -> None:
        """The run ended."""

    def finish(self) -> None:
        with self._calls:
            self._close_open_run()

    def _close_open_run(self) -> None:
        if self._open:  # the run's end never arrived (a failed subscriber, a crash)
            self._open = False
            self.close("failed")

    def detached(self, reason: str) -> None:
        """End the tracker run as failed, from a thread of its own: the handler may
        still be inside a call to the tracker, which must return first."""
        if not self._open:
            return
        closer = threading.Thread(
            target=self._close_when_free, name=f"evloop-{self.name}-close", daemon=True
        )
        _closing.add(closer)
        closer.start()

    def _close_when_free(self) -> None:
        try:
            if not self._calls.acquire(timeout=CLOSE_AFTER_DETACH_S):
                log.error(
                    "%s: its tracker run is left open: a call to the tracker has not "
                    "returned in %.0f s",
                    self.name,
                    CLOSE_AFTER_DETACH_S,
                )
                return
            try:
                self._close_open_run()
            except Exception as error:
                log.error("%s: could not end its tracker run: %r", self.name, error)
            finally:
                self._calls.release()
        finally:
            _closing.discard(threading.current_thread())


@atexit.register
def _wait_for_closing_runs() -> None:
    deadline = time.monotonic() + EXIT_WAIT_S
    for closer in list(_closing):
        closer.join(max(0.0, deadline - time.monotonic()))
