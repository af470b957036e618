"""StdoutLogger: Torchélie's one-line progress print, as an async subscriber."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm

from ..bus import Subscriber
from ..events import (
    BatchEnded,
    CommandApplied,
    DivergenceRolledBack,
    EpochEnded,
    EvalFinished,
    EvalSkipped,
    Event,
    RunStateChanged,
    SyncDetected,
)
from .format import command_line, format_metrics, metrics_line

__all__ = ["StdoutLogger", "format_metrics", "batch_every"]


def batch_every(log_every: int) -> int | None:
    """A logger's ``log_every`` as its subscription's ``every``: ``-1`` (epoch ends
    only) is None; 0 and other negatives are refused."""
    if log_every == 0 or log_every < -1:
        raise ValueError(f"log_every must be a positive number or -1, got {log_every}")
    return log_every if log_every > 0 else None


class StdoutLogger(Subscriber):
    """Prints ``<prefix> | Ep. <epoch> It <epoch_batch> | loss=0.4312 acc=0.9125`` every
    ``log_every`` iterations (``-1``: at epoch ends only) and at each epoch end, never
    the same line twice (``Ep. … | …`` without a prefix). A display logger: when it
    falls behind it shows the newest values and the skipped lines are counted by the
    bus. Skipped evaluations, applied commands (``set from … after iteration 340: lr
    0.01 → 0.0001``) and a stop (``stopping after iteration 90: EarlyStopping: …``)
    are printed; ``evaluations=True`` prints evaluation results too (an attached
    logger: the evaluation's own logger is not there).

    Lines go through tqdm's writer, so a progress bar on the same terminal is redrawn
    below them instead of being written over; the lines of one delivery are written at
    once, so that a slow stream costs one blocking write per delivery, not one per line.
    Writes happen in a thread of their own: a stream that stops being read holds that
    thread, never the event loop (the run's end gives up on it after its drain
    deadline and reports it).
    """

    policy = "latest"
    maxsize = 64
    blocking = True  # a stream nobody reads (``| less``, a paused terminal) blocks its write

    def __init__(
        self,
        log_every: int = 10,
        prefix: str = "",
        stream: TextIO | None = None,
        evaluations: bool = False,
    ) -> None:
        self.every = batch_every(log_every)
        self.log_every = log_every
        self.prefix = prefix
        self.stream = stream
        types: list[type[Event]] = [
            EpochEnded,
            EvalSkipped,
            SyncDetected,
            DivergenceRolledBack,
            CommandApplied,
            RunStateChanged,
        ]
        if self.every:
            types.append(BatchEnded)
        if evaluations:
            types.append(EvalFinished)
        self.types = tuple(types)
        self._last_line: str | None = None
        self._lines: list[str] = []  # printed at the next flush

    @property
    def name(self) -> str:
        return f"StdoutLogger[{self.prefix}]" if self.prefix else "StdoutLogger"

    @property
    def state_key(self) -> str:
        return self.name

    def handle(self, event: Event) -> None:
        if isinstance(event, CommandApplied):
            self._print(command_line(event))
            return
        if isinstance(event, RunStateChanged):
            if not event.reason.startswith(("pause from", "resume from", "stop from")):
                self._print(f"{event.state} after iteration {event.iters}: {event.reason}")
            return  # a command's change has its own line
        if isinstance(event, DivergenceRolledBack):
            if event.stopped:
                self._print(f"diverged at iteration {event.iters} ({event.reason}): stopped")
            else:
                self._print(
                    f"diverged ({event.reason}): back to iteration {event.restored_to}, "
                    f"learning rates × {event.lr_factor}"
                )
            return
        if isinstance(event, SyncDetected):
            site = " ".join(event.stack.strip().splitlines()[-2:]) if event.stack else ""
            self._print(f"sync at iteration {event.iters} in {event.culprit}: {site}")
            return
        if isinstance(event, EvalSkipped):
            self._print(
                f"{event.prefix} evaluation skipped at iteration {event.iters}: the previous "
                f"one is still running ({event.skipped} skipped so far)"
            )
            return
        if isinstance(event, EvalFinished):
            where = f"Ep. {event.epoch} It {event.iters}"
            self._print(f"{event.prefix} | {where} | {metrics_line(event.metrics, event.kinds)}")
            return
        if not isinstance(event, BatchEnded | EpochEnded):
            return
        head = f"Ep. {event.epoch} It {event.epoch_batch}"
        line = f"{self.prefix} | {head}" if self.prefix else head
        line += f" | {metrics_line(event.metrics, event.kinds)}"
        if isinstance(event, EpochEnded) and line == self._last_line:
            return  # Torchélie prints the epoch's last batch twice
        self._last_line = line
        self._print(line)

    def _print(self, line: str) -> None:
        self._lines.append(line)

    def flush(self) -> None:
        stream = self.stream or sys.stdout
        if self._lines:
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            with tqdm.external_write_mode(file=stream):
                stream.write(text)
        stream.flush()

    def finish(self) -> None:
        self.flush()
