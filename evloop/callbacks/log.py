"""Log: copy a value of the state into the metrics."""

from __future__ import annotations

from typing import Any

import torch

from .watched import WatchedValue

__all__ = ["Log"]


class Log:
    """Copies ``state[from_k]`` (a dotted path such as ``'batch.0'``) to ``metrics[to]``.

    Each batch end when ``post_each_batch``, and at epoch end. A missing key is skipped;
    a warning says so once if it looks misspelt or never appeared during a run, unless
    it is ``optional`` (a value the forward function may or may not return).
    """

    def __init__(
        self, from_k: str, to: str, post_each_batch: bool = True, *, optional: bool = False
    ) -> None:
        self.from_k = from_k
        self.to = to
        self.post_each_batch = post_each_batch
        self._watched = WatchedValue(f"Log[{from_k} → {to}]", from_k, optional=optional)

    def _copy(self, state: dict[str, Any]) -> None:
        value = self._watched.get(state, _ABSENT)
        if value is _ABSENT:
            return
        if isinstance(value, torch.Tensor):
            value = value.detach()
        state["metrics"][self.to] = value

    def on_batch_end(self, state: dict[str, Any]) -> None:
        if self.post_each_batch:
            self._copy(state)

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        self._copy(state)

    def on_run_end(self, state: dict[str, Any]) -> None:
        self._watched.run_ended(state)


_ABSENT = object()
