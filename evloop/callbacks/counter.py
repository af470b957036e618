"""Counter: epoch and iteration numbers in the shared state."""

from __future__ import annotations

from typing import Any

from .. import context
from ..context import Progress

__all__ = ["Counter"]


class Counter:
    """Writes ``epoch`` (0-based), ``iters`` (0-based, global) and ``epoch_batch``
    (1-based within the epoch, 0 at epoch start) into the state, as Torchélie does.

    The numbers are the recipe's own (``recipe.progress``, which the batch loop
    advances): the state holds a copy for the callbacks and the user. Place it first so
    that the callbacks after it see this step's numbers.
    """

    def __init__(self) -> None:
        self.epoch = -1
        self.iters = -1
        self.epoch_batch = 0
        self._progress: Progress | None = None

    def _write(self, state: dict[str, Any]) -> None:
        progress = self._progress
        assert progress is not None
        self.epoch, self.iters = progress.epoch, progress.iters
        self.epoch_batch = progress.epoch_batch
        state["epoch"] = self.epoch
        state["iters"] = self.iters
        state["epoch_batch"] = self.epoch_batch

    def on_run_start(self, state: dict[str, Any]) -> None:
        self._progress = context.current().progress
        self._write(state)

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        self._write(state)

    def on_batch_start(self, state: dict[str, Any]) -> None:
        self._write(state)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "iters": self.iters, "epoch_batch": self.epoch_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self.iters = state["iters"]
        self.epoch_batch = state["epoch_batch"]
