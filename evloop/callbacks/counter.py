"""Counter: epoch and iteration numbers in the shared state."""

from __future__ import annotations

from typing import Any

__all__ = ["Counter"]


class Counter:
    """Writes ``epoch`` (0-based), ``iters`` (0-based, global) and ``epoch_batch``
    (1-based within the epoch, 0 at epoch start) into the state, as Torchélie does.

    Place it first so that the callbacks after it see this step's numbers.
    """

    def __init__(self) -> None:
        self.epoch = -1
        self.iters = -1
        self.epoch_batch = 0

    def _write(self, state: dict[str, Any]) -> None:
        state["epoch"] = self.epoch
        state["iters"] = self.iters
        state["epoch_batch"] = self.epoch_batch

    def on_run_start(self, state: dict[str, Any]) -> None:
        self._write(state)

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        self.epoch += 1
        self.epoch_batch = 0
        self._write(state)

    def on_batch_start(self, state: dict[str, Any]) -> None:
        self.iters += 1
        self.epoch_batch += 1
        self._write(state)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "iters": self.iters, "epoch_batch": self.epoch_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self.iters = state["iters"]
        self.epoch_batch = state["epoch_batch"]
