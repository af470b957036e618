"""EarlyStopping: end the run when a metric stops improving."""

from __future__ import annotations

from typing import Any

from .. import context
from ..codec import scalar
from .watched import WatchedValue

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """At each epoch end, reads ``metric`` (a dotted path in the state, e.g.
    ``'metrics.loss'`` or ``'test_metrics.acc'``) and stops the run once it has not
    improved by more than ``min_delta`` for ``patience`` epochs. ``mode`` is ``'min'``
    or ``'max'``. The run ends cleanly (a :class:`Checkpoint` writes its epoch-end file).
    """

    def __init__(
        self, metric: str, patience: int = 5, mode: str = "min", min_delta: float = 0.0
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.metric = metric
        self._watched = WatchedValue(f"EarlyStopping[{metric}]", metric)
        self.patience = patience
        self.mode = mode
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    @property
    def state_key(self) -> str:
        return f"EarlyStopping[{self.metric}]"

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        measured = self._watched.get(state)
        if measured is None:  # not measured yet (before the first evaluation), or misspelt
            self._watched.expected_now(state)
            return
        value = scalar(measured)
        if value is None:
            raise TypeError(f"EarlyStopping: {self.metric!r} is not a number")
        if self._improved(float(value)):
            self.best, self.bad_epochs = float(value), 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            context.current().stop(
                f"EarlyStopping: {self.metric} did not improve for {self.bad_epochs} epochs"
            )

    def on_run_end(self, state: dict[str, Any]) -> None:
        self._watched.run_ended(state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
