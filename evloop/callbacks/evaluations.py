"""The results of a recipe's evaluation, one at a time, for the callbacks of a
hyper-parameter search (:class:`~evloop.callbacks.OptunaPruning`,
:class:`~evloop.callbacks.RayReport`): each with the epoch and iteration it evaluated,
handled once the step that brought it is complete (after its checkpoint), or at once
when it comes at the run's end (the evaluation of the final weights)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import context
from .call_recipe import CallRecipe

__all__ = ["EvaluationResults", "monitored_prefix"]

# handle(state, epoch, iters, final): final for the result of the run's last evaluation
Handler = Callable[[dict[str, Any], int, int, bool], None]


def monitored_prefix(owner: str, monitor: Any) -> str | None:
    """The evaluation a dotted ``monitor`` path reads (``'test_metrics.loss'``:
    ``'test'``), or None for the training metrics (``'metrics.loss'``)."""
    if not isinstance(monitor, str) or monitor.count(".") != 1:
        raise ValueError(
            f"{owner} watches an evaluation's metric as 'test_metrics.loss' (the state's "
            f"'<prefix>_metrics' dict and a name in it) or a training one as "
            f"'metrics.loss', got {monitor!r}"
        )
    group = monitor.split(".")[0]
    if group == "metrics":
        return None
    if not group.endswith("_metrics") or group == "_metrics":
        raise ValueError(
            f"{owner}: {monitor!r} is not in an evaluation's '<prefix>_metrics' (e.g. "
            "'test_metrics.loss') nor in 'metrics'"
        )
    return group[: -len("_metrics")]


class EvaluationResults:
    """The results of the recipe's ``CallRecipe(prefix=...)``, handed to ``handle``.
    Its owner calls :meth:`start` at its run's start, :meth:`step_done` from its
    ``on_batch_done`` and ``on_epoch_done``, :meth:`run_ending` from its
    ``on_run_end``."""

    def __init__(self, owner: str, prefix: str, handle: Handler) -> None:
        self.owner = owner
        self.prefix = prefix
        self._handle = handle
        self._pending: list[tuple[int, int]] = []
        self._ending = False

    def start(self) -> None:
        """Find the evaluation, or say how to add it."""
        recipe = context.current().recipe
        calls = [
            cb
            for cb in recipe.callbacks.callbacks()
            if isinstance(cb, CallRecipe) and cb.prefix == self.prefix
        ]
        if not calls:
            raise ValueError(
                f"{self.owner} acts on each result of the evaluation {self.prefix!r}, and "
                f"this recipe has none: add CallRecipe(test_loop, run_every, "
                f"prefix={self.prefix!r}) (TrainAndTest has one, prefix 'test')"
            )
        if self._installed not in calls[0].listeners:
            calls[0].listeners.append(self._installed)
        self._pending.clear()
        self._ending = False

    def _installed(self, state: dict[str, Any], epoch: int, iters: int) -> None:
        if self._ending:
            self._handle(state, epoch, iters, True)
        else:
            self._pending.append((epoch, iters))

    def step_done(self, state: dict[str, Any]) -> None:
        pending, self._pending = self._pending, []
        for epoch, iters in pending:
            self._handle(state, epoch, iters, False)

    def run_ending(self, state: dict[str, Any]) -> None:
        self.step_done(state)
        self._ending = True  # the final evaluation may still come, later in on_run_end
