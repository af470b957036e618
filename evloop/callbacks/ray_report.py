"""RayReport: a recipe as a Ray Train (or Tune) training function reports its metrics
and its newest checkpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from typing import Any

from ..codec import scalar
from .checkpoint import Checkpoint
from .evaluations import EachEvaluation

__all__ = ["RayReport"]

REPORTED_DIR = ".ray"  # beside the checkpoint files: the one last reported


class RayReport(EachEvaluation):
    """At each result of the evaluation ``prefix`` (a ``CallRecipe``; with
    ``prefix=None``, at each epoch's end), ``ray.train.report(metrics,
    checkpoint=...)`` on every rank: the evaluation's numbers as ``<prefix>/<name>``,
    the training ones as ``train/<name>``, and ``epoch`` and ``iters`` (the iteration
    evaluated); with ``checkpoint`` (a :class:`~evloop.callbacks.Checkpoint` of the
    recipe), its newest file on disk, in a folder of its own (a hard link) that Ray
    uploads to the run's storage. Put it after the ``Checkpoint`` so that an epoch's
    file is written first.

    ``report``: the function to call, ``ray.train.report`` by default; in a Ray Tune
    function trainable pass ``ray.tune.report``. Ray's report is a barrier between a
    Ray Train job's workers: every rank reports at the same steps (evaluations in a
    distributed run are inline, on every rank), rank 0 with the checkpoint.
    Needs ``pip install 'ray[train]'``.
    """

    def __init__(
        self,
        checkpoint: Checkpoint | None = None,
        prefix: str | None = "test",
        report: Callable[..., Any] | None = None,
    ) -> None:
        import ray.train  # fails here without ray

        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"RayReport reports a Checkpoint callback's files, got {checkpoint!r}")
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.report = report or ray.train.report
        self._checkpoint_class = ray.train.Checkpoint
        self.follow(f"RayReport[{prefix}]", prefix)
        self._last_folder: str | None = None
        self.reports = 0
        """Reports made by this process."""

    def result(self, state: dict[str, Any], epoch: int, iters: int, final: bool) -> None:
        self._report(state, epoch, iters)

    def _report(self, state: dict[str, Any], epoch: int, iters: int) -> None:
        metrics: dict[str, Any] = {"epoch": epoch, "iters": iters}
        metrics.update(_numbers("train", state.get("metrics", {})))
        if self.prefix is not None:
            metrics.update(_numbers(self.prefix, state.get(f"{self.prefix}_metrics", {})))
        folder = self._newest_checkpoint()
        if folder is None:
            self.report(metrics)
        else:
            self.report(metrics, checkpoint=self._checkpoint_class.from_directory(folder))
            self._forget_previous(folder)
        self.reports += 1

    def _newest_checkpoint(self) -> str | None:
        """A folder holding (a link to) the newest checkpoint file written, or None."""
        if self.checkpoint is None:
            return None
        self.checkpoint.wait()
        newest = next((p for p in reversed(self.checkpoint.saved) if os.path.exists(p)), None)
        if newest is None:
            return None
        name = os.path.basename(newest)
        folder = os.path.join(os.path.dirname(os.path.abspath(newest)), REPORTED_DIR, name)
        os.makedirs(folder, exist_ok=True)
        linked = os.path.join(folder, name)
        with contextlib.suppress(FileNotFoundError):
            os.remove(linked)
        try:
            os.link(newest, linked)
        except OSError:  # another file system, or no hard links
            shutil.copy2(newest, linked)
        return folder

    def _forget_previous(self, folder: str) -> None:
        """Ray has taken the folder (uploaded, or kept in local mode): the one
        reported before goes."""
        previous, self._last_folder = self._last_folder, folder
        if previous is not None and previous != folder:
            shutil.rmtree(previous, ignore_errors=True)


def _numbers(source: str, metrics: Any) -> dict[str, float]:
    numbers: dict[str, float] = {}
    for key, value in dict(metrics).items():
        number = scalar(value)
        if number is not None:
            numbers[f"{source}/{key}"] = float(number)
    return numbers
