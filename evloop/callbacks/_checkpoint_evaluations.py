"""Which evaluation a Checkpoint follows, and pairing each one with the weights it scored.

An inline evaluation scores the live weights of its step: the file is written at that
step's end. A concurrent one scores a snapshot while training goes on: the training
state of its step is copied to host memory at that step's end and written, with the
evaluation's results put in, once the results are back.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

from ..host import HostCopy
from .call_recipe import CallRecipe, Evaluation

__all__ = [
    "warn_unpaired_key_best",
    "FollowedEvaluations",
    "Waiting",
    "Ended",
    "followed_prefix",
    "results_of",
    "put_results",
    "names_of",
    "drop_results",
]


class Waiting(NamedTuple):
    """The training state of a concurrent evaluation's step, until its results come:
    the file's name and the monitored value as they were at that step."""

    path: str
    snapshot: HostCopy
    monitored: Any
    taken: float


class Ended(NamedTuple):
    """A followed evaluation that ended, with what it changed in the saved state (for a
    concurrent one: taken when its results came in, before anything newer)."""

    evaluation: Evaluation
    results: dict[str, Any] | None


class FollowedEvaluations:
    """The evaluations of one prefix announced since the last step boundary, and the
    snapshots waiting for results."""

    def __init__(self) -> None:
        self.prefix: str | None = None
        self.started: list[Evaluation] = []
        self.ended: list[Ended] = []
        self.waiting: dict[int, Waiting] = {}

    def follow(self, prefix: str | None) -> None:
        """At a run's start: follow ``prefix`` (None: none); forget the last run's."""
        self.prefix = prefix
        self.started, self.ended, self.waiting = [], [], {}

    def start(self, evaluation: Evaluation) -> None:
        if evaluation.prefix == self.prefix:
            self.started.append(evaluation)

    def end(self, evaluation: Evaluation, objects: Any) -> bool:
        """Record an ended evaluation (and its results in the state ``objects`` saves,
        when a snapshot waits for them); whether it is one this checkpoint follows."""
        if evaluation.prefix != self.prefix:
            return False
        waits = evaluation.iters in self.waiting
        self.ended.append(Ended(evaluation, results_of(objects, evaluation) if waits else None))
        return True

    def take(self) -> tuple[list[Ended], list[Evaluation]]:
        """At a step boundary: the evaluations that ended, then those started and not
        ended yet (their snapshot is due now)."""
        ended, self.ended = self.ended, []
        done = {id(e.evaluation) for e in ended}
        running = [e for e in self.started if id(e) not in done]
        self.started = []
        return ended, running


def followed_prefix(
    callbacks: list[Any], evaluation: str | None, monitor: str | None, owner: str
) -> str | None:
    """The prefix of the ``CallRecipe`` a checkpoint follows: ``evaluation`` (which must
    exist), or the one whose metrics ``monitor`` reads (``'test_metrics.acc'``)."""
    prefixes = [cb.prefix for cb in callbacks if isinstance(cb, CallRecipe)]
    if evaluation is not None:
        if evaluation not in prefixes:
            raise ValueError(
                f"{owner} follows the evaluation {evaluation!r}, but the recipe has no "
                f"CallRecipe with that prefix (it has {prefixes or 'none'})"
            )
        return evaluation
    if monitor is not None:
        root = monitor.split(".", 1)[0]
        for prefix in prefixes:
            if root == f"{prefix}_metrics":
                return prefix
    return None


def results_of(objects: Any, evaluation: Evaluation) -> dict[str, Any] | None:
    """What an evaluation changed in the state ``objects`` saves, when ``objects`` is
    the recipe that ran it: its metrics in the shared state, the evaluated recipe's own
    state. Taken in the training thread when the results are in."""
    runner = getattr(objects, "callbacks", None)
    if runner is None or not hasattr(objects, "savable_names"):
        return None
    key = f"{evaluation.prefix}_metrics"
    results: dict[str, Any] = {"metrics": {key: runner.savable_state().get(key)}}
    results["loop"] = {name: evaluation.loop.state_dict() for name in names_of(objects, evaluation)}
    return results


def names_of(objects: Any, evaluation: Evaluation) -> list[str]:
    """The names the evaluated recipe is saved under in ``objects`` (a recipe)."""
    if not hasattr(objects, "savable_names"):
        return []
    return [n for n in objects.savable_names() if getattr(objects, n) is evaluation.loop]


def put_results(saved: Any, results: dict[str, Any] | None) -> None:
    """Put an evaluation's results into a state saved before they existed."""
    if results is None or not isinstance(saved, dict):
        return
    shared = saved.get("callbacks", {}).get("state")
    if isinstance(shared, dict):
        shared.update({k: v for k, v in results["metrics"].items() if v is not None})
    saved.update(results.get("loop", {}))


def drop_results(saved: Any, objects: Any, prefix: str, loop: Any) -> None:
    """Take an evaluation's results out of a state saved at another step than the one
    it evaluated: a file never holds the scores of other weights."""
    shared = saved.get("callbacks", {}).get("state") if isinstance(saved, dict) else None
    if isinstance(shared, dict):
        shared.pop(f"{prefix}_metrics", None)
    if not hasattr(objects, "savable_names"):
        return
    for name in objects.savable_names():
        if getattr(objects, name) is loop and isinstance(saved.get(name), dict):
            own = saved[name].get("callbacks", {}).get("state")
            if isinstance(own, dict):
                own["metrics"] = {}


def warn_unpaired_key_best(state_key: str, callbacks: list[Any]) -> None:
    """Warn when ``key_best`` scores epoch ends while the recipe evaluates: the scores
    may then read results of other weights than those saved."""
    prefixes = [cb.prefix for cb in callbacks if isinstance(cb, CallRecipe)]
    if prefixes:
        warnings.warn(
            f"{state_key} scores each file with key_best at epoch ends while the "
            f"recipe evaluates ({prefixes[0]!r}): if key_best reads the evaluation's "
            f"results, pass evaluation={prefixes[0]!r} so that each score is saved "
            "with the weights it came from",
            RuntimeWarning,
            stacklevel=3,
        )
