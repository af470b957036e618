"""OptunaPruning: prune an Optuna trial from its evaluations, the way
optuna-integration's callbacks do for Lightning, ignite and Keras."""

from __future__ import annotations

from typing import Any

from .. import context
from ..codec import scalar
from ..distributed import world
from .evaluations import EachEvaluation, monitored_prefix
from .watched import WatchedValue

__all__ = ["OptunaPruning"]


class OptunaPruning(EachEvaluation):
    """``OptunaPruning(trial, monitor, mode=None)``: at each result of the evaluation
    ``monitor`` reads (``'test_metrics.loss'``: the ``CallRecipe(prefix='test')``'s),
    ``trial.report(value, step)`` with the training iteration it evaluated as the step;
    when ``trial.should_prune()``, the run ends cleanly at that step boundary (final
    checkpoint, loggers drained, ``pruned`` as its status in ``summary.json``) and
    ``run()``/``arun()`` then raise ``optuna.TrialPruned``, which the study records.
    ``'metrics.loss'`` (a training metric) is reported at each epoch's end instead.

    ``mode`` (``'min'`` or ``'max'``) says which way ``monitor`` improves; it must be
    the study's direction (the default), else pruning would keep the worst trials.
    In a distributed run rank 0 reports and decides; every rank stops.
    Needs ``pip install optuna``.
    """

    def __init__(self, trial: Any, monitor: str, mode: str | None = None) -> None:
        import optuna  # fails here without optuna

        self._pruned = optuna.TrialPruned
        self.trial = trial
        self.monitor = monitor
        self.prefix = monitored_prefix(self.state_key, monitor)
        self.mode = _checked_mode(trial, monitor, mode, optuna.study.StudyDirection.MINIMIZE)
        self._watched = WatchedValue(self.state_key, monitor)
        self.follow(self.state_key, self.prefix)
        self.reported: list[tuple[int, float]] = []
        """The (step, value) pairs reported to the trial by this process."""

    @property
    def state_key(self) -> str:
        return f"OptunaPruning[{self.monitor}]"

    def on_run_end(self, state: dict[str, Any]) -> None:
        super().on_run_end(state)
        self._watched.run_ended(state)

    def result(self, state: dict[str, Any], epoch: int, iters: int, final: bool) -> None:
        # the final evaluation is reported; a trial that trained to its end is not pruned
        self._report(state, iters, prune=not final)

    def _report(self, state: dict[str, Any], step: int, prune: bool) -> None:
        measured = self._watched.get(state)
        if measured is None or not world().is_main:
            return
        value = scalar(measured)
        if value is None:
            raise TypeError(f"{self.state_key}: {self.monitor!r} is not a number")
        value = float(value)
        self.trial.report(value, step)
        self.reported.append((step, value))
        if prune and self.trial.should_prune():
            why = (
                f"trial {self.trial.number} pruned at iteration {step}: {self.monitor}={value:.4g}"
            )
            context.current().root.stop("pruned", self._pruned(why))


def _checked_mode(trial: Any, monitor: str, mode: str | None, minimize: Any) -> str:
    directions = trial.study.directions
    if len(directions) != 1:
        raise ValueError("OptunaPruning needs a single-objective study (Optuna prunes only those)")
    direction = "min" if directions[0] == minimize else "max"
    if mode is None:
        return direction
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if mode != direction:
        raise ValueError(
            f"the study {direction}imizes and {monitor} improves as it goes {mode}: pruning "
            f"on it would keep the worst trials (watch another metric, or "
            f"create_study(direction={'maximize' if mode == 'max' else 'minimize'!r}))"
        )
    return mode
