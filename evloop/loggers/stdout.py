"""StdoutLogger: Torchélie's one-line progress print, as an async subscriber."""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

from tqdm.auto import tqdm

from .. import context
from ..bus import Subscriber
from ..events import (
    BatchEnded,
    CommandApplied,
    DivergenceRolledBack,
    EpochEnded,
    EvalFinished,
    EvalSkipped,
    Event,
    RunStarted,
    RunStateChanged,
    SyncDetected,
)
from .format import command_line, format_metrics, metrics_line

__all__ = ["StdoutLogger", "format_metrics", "batch_every", "run_end_epoch"]


def batch_every(log_every: int) -> int | None:
    """A logger's ``log_every`` as its subscription's ``every``: ``-1`` (epoch ends
    only) is None; 0 and other negatives are refused."""
    if log_every == 0 or log_every < -1:
        raise ValueError(f"log_every must be a positive number or -1, got {log_every}")
    return log_every if log_every > 0 else None


NO_VISDOM = (
    "this is a StdoutLogger, which has no visdom client: Torchélie scripts reach a "
    "recipe's VisdomLogger as callbacks.cbs[-1][0], which in evloop exists only with "
    "visdom_env=... (TrainAndTest and Classification default to None, Torchélie to "
    "'main'); or add one: recipe.callbacks.add_epilogue(VisdomLogger(env))"
)


def run_end_epoch(event: RunStarted) -> int:
    """The epoch a run ends at, 1-based (a run resumed mid-epoch finishes that one
    first); the progress bar shows the same ``epoch 3/5``."""
    resumed_mid_epoch = bool(
        event.total_batches is not None
        and event.batches_per_epoch
        and event.total_batches % event.batches_per_epoch
    )
    first = event.epoch if resumed_mid_epoch else event.epoch + 1
    return first + event.epochs


class StdoutLogger(Subscriber):
    """Prints ``<prefix> | Ep. 2/5 It <epoch_batch> | loss=0.4312 acc=0.9125`` every
    ``log_every`` iterations (``-1``: at epoch ends only) and at each epoch end, never
    the same line twice (``Ep. … | …`` without a prefix). Epochs count from 1, as the
    progress bar's (Torchélie printed the 0-based index); the metrics keep their
    places from line to line, and ``lr_0 lr_1`` of one value print as ``lr``. A
    display logger: when it falls behind it shows the newest values and the skipped
    lines are counted by the bus. Skipped evaluations, applied commands (``set from …
    after iteration 340: lr 0.01 → 0.0001``) and a stop (``stopping after iteration
    90: EarlyStopping: …``) are printed; ``evaluations=True`` prints evaluation
    results too (an attached logger: the evaluation's own logger is not there). The
    lines of an evaluation running beside training (concurrent) say so: they come
    after training moved on.

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
            RunStarted,
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
        self._order: dict[str, int] = {}  # where each metric first appeared in a line
        self._epochs: int | None = None  # the run's last epoch, 1-based, once known
        self._beside = ""  # said of lines of an evaluation that runs beside training

    @property
    def name(self) -> str:
        return f"StdoutLogger[{self.prefix}]" if self.prefix else "StdoutLogger"

    @property
    def vis(self) -> Any:
        raise AttributeError(NO_VISDOM)

    @vis.setter
    def vis(self, client: Any) -> None:
        raise AttributeError(NO_VISDOM)

    @property
    def state_key(self) -> str:
        return self.name

    def on_run_start(self, state: dict[str, Any]) -> None:
        """In the run it logs: an evaluation running in a thread of its own prints
        after training moved on, and its lines say so."""
        ctx = context.current()
        concurrent = ctx.nested and threading.get_ident() != ctx.root_thread
        self._beside = " (evaluated beside training)" if concurrent else ""

    def _epoch(self, epoch: int) -> str:
        """1-based, as the progress bar counts: ``Ep. 3/5``."""
        return f"Ep. {epoch + 1}" + (f"/{self._epochs}" if self._epochs else "")

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            if not event.source:  # a nested run's epochs are not the run's
                self._epochs = run_end_epoch(event)
            return
        if isinstance(event, CommandApplied):
            self._print(command_line(event))
            return
        if isinstance(event, RunStateChanged):
            if not event.reason.startswith(("pause from", "resume from", "stop from")):
                why = f": {event.reason}" if event.reason else ""
                self._print(f"{event.state} after iteration {event.iters}{why}")
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
            where = f"{self._epoch(event.epoch)} iteration {event.iters}"
            line = metrics_line(event.metrics, event.kinds, self._order)
            self._print(f"{event.prefix} | {where} | {line}")
            return
        if not isinstance(event, BatchEnded | EpochEnded):
            return
        head = f"{self._epoch(event.epoch)} It {event.epoch_batch}{self._beside}"
        line = f"{self.prefix} | {head}" if self.prefix else head
        line += f" | {metrics_line(event.metrics, event.kinds, self._order)}"
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
