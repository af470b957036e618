"""AccAvg and TopkAccAvg: classification accuracy, averaged on the device."""

from __future__ import annotations

from typing import Any

import torch

from .averages import MetricAvg, WindowedMetricAvg

__all__ = ["AccAvg", "TopkAccAvg", "as_multiclass_shape", "labels_of", "batch_field", "BatchKey"]

AVG_TYPES = ("window", "running")


def as_multiclass_shape(pred: torch.Tensor) -> torch.Tensor:
    """Binary logits ``[B]`` or ``[B, 1]`` as two columns ``[-x, x]``; others unchanged."""
    if pred.dim() == 1 or (pred.dim() == 2 and pred.shape[1] == 1):
        pred = pred.reshape(-1, 1)
        return torch.cat([-pred, pred], dim=1)
    return pred


BatchKey = int | str


def batch_field(state: dict[str, Any], key: BatchKey, what: str = "labels") -> torch.Tensor:
    """``batch[key]`` of the device batch (``batch[1]``: the labels of ``(x, y)``
    batches; ``batch['labels']``: of dict batches), or a KeyError saying what to pass."""
    batch = state["_batch_gpu"]
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError):
        shape = (
            f"a dict with keys {sorted(batch)}"
            if isinstance(batch, dict)
            else (f"a {type(batch).__name__}")
        )
        raise KeyError(
            f"the {what} are read from batch[{key!r}], but the batch is {shape}: give the "
            f"key or index of the {what} (target=... for labels, input=... for inputs)"
        ) from None


def labels_of(state: dict[str, Any], target: BatchKey = 1) -> torch.Tensor:
    """The labels of the batch, on the device: ``batch[target]``."""
    return batch_field(state, target, "labels")


class _TopkAvg(MetricAvg):
    """Fraction of samples whose label is among the ``k`` best predictions."""

    def __init__(
        self, k: int, name: str, post_each_batch: bool, avg_type: str, target: BatchKey
    ) -> None:
        if avg_type not in AVG_TYPES:
            raise ValueError(f"avg_type must be one of {AVG_TYPES}, got {avg_type!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int of at least 1, got {k!r}")
        super().__init__(name, post_each_batch)
        self.k = k
        self.target = target
        self.avg_type = avg_type
        self.window = WindowedMetricAvg(name, post_each_batch=False)
        self.correct: Any = None
        self.total = 0

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        super().on_epoch_start(state)
        self.correct, self.total = None, 0

    @property
    def reads(self) -> str:
        return "pred"

    def value_of(self, state: dict[str, Any]) -> torch.Tensor | None:
        """Per sample: is the label among the ``k`` highest logits?"""
        if state.get("pred") is None:
            return None
        pred = as_multiclass_shape(state["pred"].detach())
        labels = labels_of(state, self.target).to(pred.device)
        if self.k == 1:
            return pred.argmax(1) == labels
        return (pred.topk(self.k, dim=1).indices == labels[:, None]).any(1)

    def add(self, hits: torch.Tensor) -> None:
        if self.avg_type == "running":
            batch_correct = hits.sum()
            self.correct = batch_correct if self.correct is None else self.correct + batch_correct
            self.total += hits.numel()
        else:
            self.window.add(hits.float().mean())

    def get(self) -> Any:
        if self.avg_type == "running":
            return None if self.correct is None else self.correct / self.total
        return self.window.get()

    def state_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "total": self.total, "window": self.window.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.correct, self.total = state["correct"], state["total"]
        self.window.load_state_dict(state["window"])


class AccAvg(_TopkAvg):
    """``metrics['acc']`` from ``state['pred']`` (logits) and ``batch[target]`` (labels:
    ``batch[1]``, or ``target='labels'`` for dict batches).

    ``avg_type='window'``: mean of the last 100 batches' accuracies; ``'running'``:
    correct / seen since the epoch started.
    """

    def __init__(
        self, post_each_batch: bool = True, avg_type: str = "window", target: BatchKey = 1
    ) -> None:
        super().__init__(1, "acc", post_each_batch, avg_type, target)


class TopkAccAvg(_TopkAvg):
    """``metrics['top{k}_acc']``: the label is among the ``k`` highest logits."""

    def __init__(
        self,
        k: int = 5,
        post_each_batch: bool = True,
        avg_type: str = "window",
        target: BatchKey = 1,
    ) -> None:
        super().__init__(k, f"top{k}_acc", post_each_batch, avg_type, target)
