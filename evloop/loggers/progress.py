"""ProgressBar: a tqdm bar fed from the async lane."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ..bus import Subscriber
from ..events import BatchEnded, EpochStarted, Event, RunFailed, RunFinished, RunStarted
from .stdout import format_metrics

__all__ = ["ProgressBar"]


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (tqdm then draws a notebook widget)."""
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


class ProgressBar(Subscriber):
    """Epoch and iteration, throughput (it/s), ETA within the epoch and the latest
    scalar metrics. A display subscriber (``latest`` policy: it never slows training
    and shows the newest step). Shown on a terminal and in a Jupyter notebook (as a
    notebook widget), elsewhere only with ``force=True``.
    """

    policy = "latest"
    maxsize = 64
    types = (RunStarted, EpochStarted, BatchEnded, RunFinished, RunFailed)

    def __init__(self, stream: TextIO | None = None, force: bool = False) -> None:
        self.stream = stream
        self.force = force
        self._bar: Any = None
        self._per_epoch: int | None = None
        self._position = 0

    @property
    def enabled(self) -> bool:
        stream = self.stream or sys.stderr
        return self.force or (hasattr(stream, "isatty") and stream.isatty()) or _in_notebook()

    def handle(self, event: Event) -> None:
        if not self.enabled:
            return
        if isinstance(event, RunStarted):
            self._per_epoch = event.batches_per_epoch
        elif isinstance(event, EpochStarted):
            self._new_bar(event.epoch)
        elif isinstance(event, BatchEnded):
            if self._bar is None:
                self._new_bar(event.epoch)
            self._bar.update(event.epoch_batch - self._position)
            self._position = event.epoch_batch
            self._bar.set_postfix(format_metrics(event.metrics, event.kinds), refresh=False)
        elif isinstance(event, RunFinished | RunFailed):
            self._close()

    def _new_bar(self, epoch: int) -> None:
        from tqdm.auto import tqdm

        self._close()
        self._bar = tqdm(
            total=self._per_epoch,
            desc=f"epoch {epoch}",
            unit="it",
            file=self.stream or sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )
        self._position = 0

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def finish(self) -> None:
        self._close()
