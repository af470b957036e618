"""The results of a recipe's evaluation, one at a time, for the callbacks of a
hyper-parameter search (:class:`~evloop.callbacks.OptunaPruning`,
:class:`~evloop.callbacks.RayReport`): each with the epoch and iteration it evaluated,
handled once the step that brought it is complete (after its checkpoint), or at once
when it comes at the run's end (the evaluation of the final weights)."""

from __future__ import annotations

from typing import Any

from .. import context
from .call_recipe import CallRecipe, Evaluation

__all__ = ["EachEvaluation", "monitored_prefix"]


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


class EachEvaluation:
    """Base of the callbacks that act on each result of the recipe's
    ``CallRecipe(prefix=...)`` (``prefix`` None: on the training metrics at each epoch's
    end): subclasses call :meth:`follow` and define :meth:`result`."""

    _prefix: str | None = None
    _owner = ""
    _pending: list[tuple[int, int]]
    _ending = False

    def follow(self, owner: str, prefix: str | None) -> None:
        self._owner, self._prefix, self._pending = owner, prefix, []

    def result(self, state: dict[str, Any], epoch: int, iters: int, final: bool) -> None:
        """One result, with the epoch and iteration it evaluated; ``final`` for the
        evaluation of the final weights, at the run's end."""
        raise NotImplementedError

    def on_run_start(self, state: dict[str, Any]) -> None:
        """Find the evaluation, or say how to add it."""
        self._pending, self._ending = [], False
        if self._prefix is None:
            return
        recipe = context.current().recipe
        if not any(
            isinstance(cb, CallRecipe) and cb.prefix == self._prefix
            for cb in recipe.callbacks.callbacks()
        ):
            raise ValueError(
                f"{self._owner} acts on each result of the evaluation {self._prefix!r}, and "
                f"this recipe has none: add CallRecipe(test_loop, run_every, "
                f"prefix={self._prefix!r}) (TrainAndTest has one, prefix 'test')"
            )

    def on_eval_end(self, state: dict[str, Any], evaluation: Evaluation) -> None:
        if evaluation.prefix != self._prefix:
            return
        if self._ending:
            self.result(state, evaluation.epoch, evaluation.iters, True)
        else:
            self._pending.append((evaluation.epoch, evaluation.iters))

    def on_batch_done(self, state: dict[str, Any]) -> None:
        pending, self._pending = self._pending, []
        for epoch, iters in pending:
            self.result(state, epoch, iters, False)

    def on_epoch_done(self, state: dict[str, Any]) -> None:
        self.on_batch_done(state)
        if self._prefix is None:
            progress = context.current().progress
            self.result(state, progress.epoch, progress.iters, False)

    def on_run_end(self, state: dict[str, Any]) -> None:
        self.on_batch_done(state)
        self._ending = True  # the final evaluation may still come, later in on_run_end
