"""TorchMetric: any torchmetrics metric, updated on the device each step."""

from __future__ import annotations

from typing import Any

from .. import context
from .accuracy import BatchKey, batch_field

__all__ = ["TorchMetric"]


class TorchMetric:
    """``TorchMetric(torchmetrics.classification.MulticlassF1Score(num_classes=10))``.

    Each step: ``metric.update(state[pred], batch[target])`` on the recipe's device
    (no host sync for the usual metrics); at each epoch end ``metric.compute()`` into
    ``metrics[name]`` (name: the metric's class name in snake case by default), then a
    reset at the next epoch start. Under DDP, torchmetrics itself gathers every rank's
    states in ``compute()``, so the value is global. With ``post_each_batch``, each
    step also posts that batch's own value (computed locally, never synchronised).
    Its state is saved with the recipe, so a run resumed mid-epoch goes on counting.
    """

    exchanges_between_ranks = True
    """In a distributed run it takes part in collectives: every rank must have it."""

    def __init__(
        self,
        metric: Any,
        name: str | None = None,
        pred: str = "pred",
        target: BatchKey = 1,
        post_each_batch: bool = False,
    ) -> None:
        self.metric = metric
        self.name = name or _snake(type(metric).__name__)
        self.pred, self.target = pred, target
        self.post_each_batch = post_each_batch

    @property
    def state_key(self) -> str:
        return f"TorchMetric[{self.name}]"

    def on_run_start(self, state: dict[str, Any]) -> None:
        self.metric.to(context.current().recipe.device)

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        self.metric.reset()
        state["metrics"].pop(self.name, None)

    def on_batch_end(self, state: dict[str, Any]) -> None:
        if state.get(self.pred) is None:
            return
        pred = state[self.pred].detach()
        target = batch_field(state, self.target, "targets")
        if self.post_each_batch:
            state["metrics"][self.name] = self.metric.forward(pred, target)
        else:
            self.metric.update(pred, target)

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        if self.metric.update_called:
            state["metrics"][self.name] = self.metric.compute()

    def state_dict(self) -> dict[str, Any]:
        return {"states": dict(self.metric.metric_state), "updates": self.metric.update_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state["states"].items():
            setattr(self.metric, key, value)
        self.metric._update_count = state["updates"]


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
