"""Log: copy a value of the state into the metrics."""

from __future__ import annotations

from typing import Any

import torch

from ..utils import dict_by_key

__all__ = ["Log"]


class Log:
    """Copies ``state[from_k]`` (a dotted path such as ``'batch.0'``) to ``metrics[to]``.

    Each batch end when ``post_each_batch``, and at epoch end. A missing key is skipped.
    """

    def __init__(self, from_k: str, to: str, post_each_batch: bool = True) -> None:
        self.from_k = from_k
        self.to = to
        self.post_each_batch = post_each_batch

    def _copy(self, state: dict[str, Any]) -> None:
        try:
            value = dict_by_key(state, self.from_k)
        except (KeyError, IndexError, TypeError, ValueError):
            return
        if isinstance(value, torch.Tensor):
            value = value.detach()
        state["metrics"][self.to] = value

    def on_batch_end(self, state: dict[str, Any]) -> None:
        if self.post_each_batch:
            self._copy(state)

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        self._copy(state)
