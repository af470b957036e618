"""ProgressBar: a tqdm bar over the whole run, fed from the async lane."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ..bus import Subscriber
from ..events import BatchEnded, EpochStarted, Event, RunFailed, RunFinished, RunStarted
from .format import format_metrics
from .stdout import run_end_epoch

__all__ = ["ProgressBar"]

log = logging.getLogger("evloop")


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (tqdm then draws a notebook widget)."""
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def _has_width(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that reports its width (a pseudo-terminal with
    no size reports 0, and tqdm would then draw nothing)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return True  # not a terminal: tqdm handles it


def _has_widgets() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def _bar_class() -> Any:
    """tqdm's notebook widget in a notebook that has ipywidgets, else its text bar (in
    a notebook without ipywidgets, tqdm would warn "IProgress not found" at each run:
    one line says what to install instead)."""
    global _said_widgets
    if _in_notebook() and not _has_widgets():
        if not _said_widgets:
            _said_widgets = True
            log.warning(
                "ProgressBar: a text bar here; install ipywidgets for the notebook's own "
                "bar (pip install 'evloop[notebook]')"
            )
        from tqdm.std import tqdm as text_bar

        return text_bar
    from tqdm.auto import tqdm

    return tqdm


_said_widgets = False


class ProgressBar(Subscriber):
    """One bar for the whole run: the epoch (``epoch 2/5``), iterations, it/s, the
    run's ETA and a few chosen ``metrics`` (those present). A display subscriber
    (``latest`` policy: it never slows training and shows the newest step); the bar is
    removed when the run ends (the loggers' lines stay). Shown on a terminal and in a
    Jupyter notebook (as a notebook widget), elsewhere only with ``force=True``.
    """

    policy = "latest"
    maxsize = 64
    types = (RunStarted, EpochStarted, BatchEnded, RunFinished, RunFailed)
    blocking = True  # a terminal that stops reading holds this thread, not the event loop

    def __init__(
        self,
        stream: TextIO | None = None,
        force: bool = False,
        metrics: Sequence[str] = ("loss", "acc"),
    ) -> None:
        self.stream = stream
        self.force = force
        self.metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        self._bar: Any = None
        self._start_iters = -1
        self._last_epoch = 0

    @property
    def enabled(self) -> bool:
        stream = self.stream or sys.stderr
        return self.force or (hasattr(stream, "isatty") and stream.isatty()) or _in_notebook()

    def handle(self, event: Event) -> None:
        if not self.enabled:
            return
        if isinstance(event, RunStarted):
            self._start(event)
        elif isinstance(event, EpochStarted) and self._bar is not None:
            self._bar.set_description(f"epoch {event.epoch + 1}/{self._last_epoch + 1}")
        elif isinstance(event, BatchEnded) and self._bar is not None:
            self._bar.update(event.iters - self._start_iters - self._bar.n)
            shown = format_metrics(event.metrics, event.kinds)
            chosen = {k: shown[k] for k in self.metrics if k in shown}
            self._bar.set_postfix(chosen, refresh=False)
        elif isinstance(event, RunFinished | RunFailed):
            self._close()

    def _start(self, event: RunStarted) -> None:
        tqdm = _bar_class()
        self._close()
        self._last_epoch = run_end_epoch(event) - 1
        first = self._last_epoch - event.epochs + 1
        self._start_iters = event.iters
        stream = self.stream or sys.stderr
        sized = _has_width(stream)  # a terminal of unknown width (0 columns): 100
        self._bar = tqdm(
            total=event.total_batches,
            desc=f"epoch {first + 1}/{self._last_epoch + 1}",
            unit="it",
            file=stream,
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            leave=False,
        )

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def finish(self) -> None:
        self._close()
