"""The common part of loggers that write to an experiment tracker (TensorBoard,
MLflow, Weights & Biases): which events they take and how metrics are named.

Scalars are logged as ``train/<name>`` (batch and epoch ends, the iteration as step)
and ``<prefix>/<name>`` for evaluation results (``system/<name>`` for
:class:`~evloop.callbacks.SystemMetrics`' samples); the run's hyper-parameters as
the tracker's parameters or config; images, image grids, heatmaps and
HTML reports go to what the tracker offers for them. Trackers write files or talk to
servers: the handler runs in a worker thread (``blocking``), losslessly, and never
slows training unless its 10,000-event buffer fills.
"""

from __future__ import annotations

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


class TrackingLogger(Subscriber):
    """Subclasses write: :meth:`open` (at run start), :meth:`scalars`, :meth:`media`,
    :meth:`close` (at run end, with ``'finished'``, ``'stopped'`` or ``'failed'``)."""

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

    def handle(self, event: Event) -> None:
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
            name = f"{source}/{key}"
            if kind is Kind.SCALAR:
                number = scalar(value)
                if number is not None:
                    numbers[name] = float(number)
            elif kind is not None:
                self.media(step, name, kind, value)
        if numbers:
            self.scalars(step, numbers)

    def open(self, event: RunStarted) -> None:
        """A run starts (the first one this logger sees); ``event.hparams`` holds its
        hyper-parameters."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def media(self, step: int, name: str, kind: Kind, value: Any) -> None:
        """An image, grid, heatmap, report or text; skipped unless overridden."""

    def close(self, status: str) -> None:
        """The run ended."""

    def finish(self) -> None:
        if self._open:  # the run's end never arrived (a failed subscriber, a crash)
            self.close("failed")
            self._open = False
