"""The running means of a captured step's ``EpochMetricAvg`` callbacks, updated inside
the step's graph.

Each averager's mean and count are inputs of the graph: it adds one to the count in
place and returns ``lerp(mean, value, 1 / count)``, a new tensor, which the averager
posts after the step as if it had computed it itself (a posted tensor never changes
afterwards). An epoch's first step starts from zeros with a count of 0: ``lerp``
with a weight of 1 gives the value exactly, as the eager averager's first step does.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .callbacks.averages import EpochMetricAvg

__all__ = ["CapturedAverages"]


class CapturedAverages:
    """The averagers whose means the graph updates: the recipe's plain
    ``EpochMetricAvg`` callbacks of a value the forward function returns
    (``output_keys``), holding a tensor mean when the first graph is made (their
    values' shapes and dtypes are the graph's)."""

    def __init__(self, callbacks: list[Any], output_keys: Collection[str]) -> None:
        from .callbacks.averages import EpochMetricAvg

        self.averagers: list[EpochMetricAvg] = [
            cb
            for cb in callbacks
            if type(cb) is EpochMetricAvg
            and cb.name in output_keys
            and isinstance(cb.mean, torch.Tensor)
        ]
        self._zeros = [torch.zeros_like(a.mean) for a in self.averagers]
        self._counts = [torch.zeros((), dtype=torch.float64) for _ in self.averagers]
        self._counted = [-1] * len(self.averagers)  # the counts' values, on the host

    def __len__(self) -> int:
        return len(self.averagers)

    def names(self) -> list[str]:
        """The state keys the graph must return as tensors."""
        return [a.name for a in self.averagers]

    def tensors(self) -> list[torch.Tensor]:
        """The graph's inputs: each averager's mean (zeros at an epoch's start), then
        its count."""
        inputs: list[torch.Tensor] = []
        for i, averager in enumerate(self.averagers):
            if self._counted[i] != averager.count:  # an epoch's start, a loaded state
                self._counts[i].fill_(averager.count)
                self._counted[i] = averager.count
            mean = averager.mean
            inputs.append(self._zeros[i] if mean is None else self._as_input(i, mean))
        return inputs + self._counts

    def _as_input(self, i: int, mean: Any) -> torch.Tensor:
        zeros = self._zeros[i]
        if type(mean) is torch.Tensor and mean.shape == zeros.shape and mean.dtype == zeros.dtype:
            return mean
        # a loaded mean of another type: a tensor laid out as the graph was traced for
        converted = torch.as_tensor(mean, dtype=zeros.dtype, device=zeros.device)
        return converted.expand_as(zeros).contiguous()

    def trace(self, out: Any, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """While tracing: the new means from the step's outputs ``out`` and the
        graph's inputs of :meth:`tensors`."""
        n = len(self.averagers)
        means, counts = inputs[:n], inputs[n:]
        new = []
        for averager, mean, count in zip(self.averagers, means, counts, strict=True):
            value = out.get(averager.name) if isinstance(out, dict) else None
            if not isinstance(value, torch.Tensor):
                from .captured_step import CaptureError

                raise CaptureError(f"the step returned no tensor {averager.name!r} to average")
            count.add_(1)
            weight = (1.0 / count).to(mean.dtype)
            new.append(torch.lerp(mean, value.detach().to(mean.dtype), weight))
        return new

    def adopt(self, means: list[torch.Tensor]) -> None:
        """After the graph ran: each averager takes its new mean."""
        for i, (averager, mean) in enumerate(zip(self.averagers, means, strict=True)):
            averager.adopt_captured(mean)
            self._counted[i] = averager.count
