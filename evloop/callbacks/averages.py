"""Metric averagers: they accumulate on the device and never sync it.

Each keeps its running value as a tensor (or a float for Python numbers) and posts a
fresh tensor to ``state['metrics'][name]``; the host copy is left to whoever reads it.
In a distributed run the posted value is the mean over ranks: per batch, reduced with
the step's other values every ``reduce_every`` steps (:mod:`evloop.distributed.reduce`);
at an epoch's end, at once.
"""

from __future__ import annotations

import collections
import warnings
from typing import Any

import torch

from .. import context
from ..distributed import average_over_ranks
from ..distributed.reduce import post_rank_mean

__all__ = ["MetricAvg", "EpochMetricAvg", "WindowedMetricAvg", "ExponentialMetricAvg"]


class MetricAvg:
    """Common schedule: drop the metric at epoch start, post per batch and at epoch end."""

    exchanges_between_ranks = True
    """In a distributed run it takes part in collectives: every rank must have it."""

    def __init__(self, name: str, post_each_batch: bool = True) -> None:
        if not isinstance(name, str):
            raise TypeError(f"{type(self).__name__} averages state[name], a str; got {name!r}")
        self.name = name
        self.post_each_batch = post_each_batch
        self._seen = False  # the key appeared at least once
        self._warned = False
        self._captured = False  # this step's mean came from a captured step's graph

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.name}]"

    @property
    def reads(self) -> str:
        """The state key this averager reads."""
        return self.name

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        state["metrics"].pop(self.name, None)

    def on_batch_end(self, state: dict[str, Any]) -> None:
        if self._captured:  # added in the graph already (EpochMetricAvg.adopt_captured)
            self._captured = False
        else:
            value = self.value_of(state)
            if value is None:
                return
            self.add(value)
        self._seen = True
        if self.post_each_batch:
            post_rank_mean(state["metrics"], self.name, self.get())

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        value = self.get()
        if value is not None:
            state["metrics"][self.name] = average_over_ranks(value)
        elif not self._seen and not self._warned:
            self._warned = True
            outputs = sorted(k for k in state if not k.startswith("_") and k != "metrics")
            warnings.warn(
                f"{self.state_key}: no batch of the epoch had state[{self.reads!r}], so "
                f"nothing is averaged; the state holds {outputs} (a typo?)",
                RuntimeWarning,
                stacklevel=2,
            )

    def value_of(self, state: dict[str, Any]) -> Any:
        """This batch's value, or None to skip the batch."""
        value = state.get(self.name)
        return value.detach() if isinstance(value, torch.Tensor) else value

    def add(self, value: Any) -> None:
        raise NotImplementedError

    def get(self) -> Any:
        raise NotImplementedError


class EpochMetricAvg(MetricAvg):
    """Mean of ``state[name]`` over the current epoch, into ``metrics[name]``."""

    def __init__(self, name: str, post_each_batch: bool = True) -> None:
        super().__init__(name, post_each_batch)
        self.mean: Any = None
        self.count = 0
        self._local = True  # this run averages on this rank only

    def on_run_start(self, state: dict[str, Any]) -> None:
        run = context.current_or_none()
        self._local = run is None or run.means is None  # posted as is, not over ranks

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        super().on_epoch_start(state)
        self.mean, self.count = None, 0

    def on_batch_end(self, state: dict[str, Any]) -> None:
        # The common batch in one hook call (it runs every step): a tensor value added
        # to a tensor mean, posted as is. Anything else goes the general way.
        value = state.get(self.name)
        if (
            type(value) is not torch.Tensor
            or type(self.mean) is not torch.Tensor
            or self._captured
            or not self._local
        ):
            super().on_batch_end(state)
            return
        self.add(value.detach())
        self._seen = True
        if self.post_each_batch:
            state["metrics"][self.name] = self.mean

    def adopt_captured(self, mean: Any) -> None:
        """This step's mean, computed inside a captured step's graph
        (:mod:`evloop._captured_averages`): posted at this step's ``on_batch_end``
        instead of adding the value again."""
        self.mean = mean
        self.count += 1
        self._captured = True

    def add(self, value: Any) -> None:
        # A running mean: one device op per batch (mean += (value - mean) / count),
        # out of place so that a tensor already posted in an event stays unchanged.
        self.count += 1
        if self.mean is None:
            self.mean = value
        elif isinstance(self.mean, torch.Tensor):
            self.mean = torch.lerp(self.mean, value, 1.0 / self.count)
        else:
            self.mean = self.mean + (value - self.mean) / self.count

    def get(self) -> Any:
        return self.mean

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.count = state["mean"], state["count"]


class WindowedMetricAvg(MetricAvg):
    """Mean of the last ``k`` values of ``state[name]`` (the window spans epochs)."""

    def __init__(self, name: str, post_each_batch: bool = True, k: int = 100) -> None:
        super().__init__(name, post_each_batch)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        self.values: collections.deque[Any] = collections.deque(maxlen=k)
        self.total: Any = None
        self._since_resum = 0

    def add(self, value: Any) -> None:
        # A running sum updated out of place, re-summed once per window against drift.
        if len(self.values) == self.k:
            oldest = self.values[0]
            self.values.append(value)
            if self._since_resum >= self.k:
                self._resum()
            else:
                self.total = self.total + value - oldest
                self._since_resum += 1
            return
        self.values.append(value)
        self.total = value if self.total is None else self.total + value
        self._since_resum = 0

    def _resum(self) -> None:
        values = list(self.values)
        self.total = (
            torch.stack(values).sum(0) if isinstance(values[0], torch.Tensor) else sum(values)
        )
        self._since_resum = 0

    def get(self) -> Any:
        return None if not self.values else self.total / len(self.values)

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self.values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = collections.deque(state["values"], maxlen=self.k)
        self.total = None
        if self.values:
            self._resum()


class ExponentialMetricAvg(MetricAvg):
    """Exponential moving average ``beta * avg + (1 - beta) * value`` of ``state[name]``."""

    def __init__(self, name: str, beta: float = 0.9, post_each_batch: bool = True) -> None:
        super().__init__(name, post_each_batch)
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.avg: Any = None

    def add(self, value: Any) -> None:
        if self.avg is None:
            self.avg = value
        elif isinstance(value, torch.Tensor):
            self.avg = torch.lerp(value, self.avg, self.beta)
        else:
            self.avg = self.beta * self.avg + (1 - self.beta) * value

    def get(self) -> Any:
        return self.avg

    def state_dict(self) -> dict[str, Any]:
        return {"avg": self.avg}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.avg = state["avg"]
