"""StdoutLogger: Torchélie's one-line progress print, as an async subscriber."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ..bus import Subscriber
from ..events import BatchEnded, EpochEnded, Event, scalar
from ..kinds import Kind, kind_in

__all__ = ["StdoutLogger", "format_metrics", "batch_every"]


def batch_every(log_every: int) -> int | None:
    """A logger's ``log_every`` as its subscription's ``every``: ``-1`` (epoch ends
    only) is None; 0 and other negatives are refused."""
    if log_every == 0 or log_every < -1:
        raise ValueError(f"log_every must be a positive number or -1, got {log_every}")
    return log_every if log_every > 0 else None


def format_metrics(metrics: dict[str, Any], kinds: dict[str, str] | None = None) -> dict[str, str]:
    """Scalars as ``'{:.4f}'``, text cut to 20 characters; the other kinds (images,
    vectors, HTML reports) skipped."""
    shown: dict[str, str] = {}
    for key, value in metrics.items():
        kind = kind_in(kinds or {}, key, value)
        if kind is Kind.TEXT:
            shown[key] = str(value)[:20]
        elif kind is Kind.SCALAR:
            number = scalar(value)
            if number is not None:
                shown[key] = f"{number:.4f}"
    return shown


class StdoutLogger(Subscriber):
    """Prints ``<prefix> | Ep. <epoch> It <epoch_batch> | {metrics}`` every ``log_every``
    iterations (``-1``: at epoch ends only) and at each epoch end, never the same line
    twice. A display logger: when it falls behind it shows the newest values and the
    skipped lines are counted by the bus.
    """

    policy = "latest"
    maxsize = 64

    def __init__(self, log_every: int = 10, prefix: str = "", stream: TextIO | None = None):
        self.every = batch_every(log_every)
        self.log_every = log_every
        self.prefix = prefix
        self.stream = stream
        self.types = (BatchEnded, EpochEnded) if self.every else (EpochEnded,)
        self._last_line: str | None = None

    @property
    def name(self) -> str:
        return f"StdoutLogger[{self.prefix}]" if self.prefix else "StdoutLogger"

    @property
    def state_key(self) -> str:
        return self.name

    def handle(self, event: Event) -> None:
        if not isinstance(event, BatchEnded | EpochEnded):
            return
        line = (
            f"{self.prefix} | Ep. {event.epoch} It {event.epoch_batch} | "
            f"{format_metrics(event.metrics, event.kinds)}"
        )
        if isinstance(event, EpochEnded) and line == self._last_line:
            return  # Torchélie prints the epoch's last batch twice
        self._last_line = line
        print(line, file=self.stream or sys.stdout)

    def flush(self) -> None:
        (self.stream or sys.stdout).flush()
