"""Torchélie's averaging helpers (``evloop.callbacks.avg``): ``log(x)`` then ``get()``.

They work on numbers and on device tensors alike (no host sync); the callbacks that
post averages into the metrics are in :mod:`evloop.callbacks.averages`
(``EpochMetricAvg``, ``WindowedMetricAvg``, ``ExponentialMetricAvg``).
"""

from __future__ import annotations

import collections
from typing import Any

from .averages import EpochMetricAvg, ExponentialMetricAvg, WindowedMetricAvg

__all__ = [
    "RunningAvg",
    "WindowAvg",
    "ExponentialAvg",
    "EpochMetricAvg",
    "WindowedMetricAvg",
    "ExponentialMetricAvg",
]


class RunningAvg:
    """The sum of what was logged over how many elements it stands for."""

    def __init__(self) -> None:
        self.count = 0.0
        self.val: Any = 0.0

    def log(self, x: Any, total: int = 1) -> None:
        self.count += total
        self.val = self.val + x

    def get(self) -> Any:
        return float("nan") if self.count == 0 else self.val / self.count

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "val": self.val}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.val = state["count"], state["val"]


class WindowAvg:
    """The mean of the last ``k`` values logged."""

    def __init__(self, k: int = 100) -> None:
        self.k = k
        self.vals: collections.deque[Any] = collections.deque(maxlen=k)

    def log(self, x: Any) -> None:
        self.vals.append(x)

    def get(self) -> Any:
        return float("nan") if not self.vals else sum(self.vals) / len(self.vals)

    def state_dict(self) -> dict[str, Any]:
        return {"vals": list(self.vals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vals = collections.deque(state["vals"], maxlen=self.k)


class ExponentialAvg:
    """``y ← beta · y + (1 - beta) · x``, starting from the first value."""

    def __init__(self, beta: float = 0.6) -> None:
        self.beta = beta
        self.val: Any = None

    def log(self, x: Any) -> None:
        self.val = x if self.val is None else self.beta * self.val + (1 - self.beta) * x

    def get(self) -> Any:
        if self.val is None:
            raise ValueError("ExponentialAvg.get(): nothing was logged yet")
        return self.val

    def state_dict(self) -> dict[str, Any]:
        return {"val": self.val}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.val = state["val"]
