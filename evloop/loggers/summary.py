"""A run folder's ``summary.json``: name, start, end, status (running, paused,
stopping, finished, stopped, pruned, preempted, failed; with ``stop_reason`` once
asked to stop; the ``pid`` and ``host`` of the process that runs it),
hyper-parameters, the settings' domains, a fork's ``lineage`` (:mod:`evloop.lineage`),
the last epoch's (or the final) metrics and the last evaluation's —
what a list of runs shows without reading every event log. Rewritten atomically when
the run starts, when its state changes, after each epoch and evaluation, and at its
end."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import msgspec

from ..checkpoint_io import new_file_mode
from ..events import (
    EpochEnded,
    EvalFinished,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStateChanged,
)
from ..lineage import read_lineage

__all__ = ["RunSummary", "SUMMARY_FILE", "SUMMARY_EVENTS"]

SUMMARY_FILE = "summary.json"
ENDED_BY = ("pruned", "preempted")
"""Stop reasons that are a run's status (a search pruned it, a scheduler preempted it)."""
SUMMARY_EVENTS = (RunStarted, RunStateChanged, EpochEnded, RunFinished, RunFailed, EvalFinished)


class RunSummary:
    """Follows a run's top-level events; :meth:`write` puts what changed on disk."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, SUMMARY_FILE)
        self.name = os.path.basename(os.path.abspath(directory))
        self.fields: dict[str, Any] = {}
        self.changed = False
        lineage = read_lineage(directory)
        if lineage is not None:  # a forked run: its parent and the step it forked at
            self.fields["lineage"] = lineage

    def follow(self, event: Event, metrics: dict[str, Any] | None) -> None:
        """Take in one event (its metrics as written to the log)."""
        if isinstance(event, EvalFinished) and metrics is not None:
            latest = {f"{event.prefix}/{k}": v for k, v in _scalars(metrics).items()}
            self._set(evaluation=latest)
            return
        if event.source:  # a nested run's own life: not the run's
            return
        if isinstance(event, RunStarted):
            self.fields.setdefault("start", event.time)
            self._set(name=self.name, status="running", end=None, hparams=event.hparams)
            self._set(pid=event.pid, host=event.host)  # is it still alive?
            self._set(domains=event.domains)  # what a fork of it may set
            self.fields.pop("stop_reason", None)
        elif isinstance(event, RunStateChanged):
            self._set(status=event.state)
            if event.state == "stopping":
                self._set(stop_reason=event.reason)
        elif isinstance(event, EpochEnded | RunFinished) and metrics is not None:
            self._set(epoch=event.epoch, iters=event.iters, metrics=_scalars(metrics))
            if isinstance(event, RunFinished):
                status = "stopped" if event.stopped else "finished"
                if event.stopped and event.reason in ENDED_BY:  # a search's trial, a preemption
                    status = event.reason
                self._set(status=status, end=event.time, duration=event.time - self._start())
        elif isinstance(event, RunFailed):
            self._set(status="failed", end=event.time, error=event.error)

    def record_lost(self, count: int) -> None:
        """How many events the log could not keep (a full disk), in all."""
        self._set(events_lost=count)

    def _start(self) -> float:
        return float(self.fields.get("start") or 0.0)

    def _set(self, **fields: Any) -> None:
        self.fields.update(fields)
        self.changed = True

    def write(self) -> None:
        """Atomically, when something changed (a failed write is retried next time)."""
        if not self.changed:
            return
        directory = os.path.dirname(self.path) or "."
        fd, partial = tempfile.mkstemp(prefix=".summary.", suffix=".partial", dir=directory)
        try:
            os.fchmod(fd, new_file_mode())
            with os.fdopen(fd, "wb") as file:
                file.write(msgspec.json.encode(self.fields))
            os.replace(partial, self.path)
        except OSError:
            os.unlink(partial)
            raise
        self.changed = False


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics a summary can show: numbers and text (not pictures or reports)."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float | str | bool) and not isinstance(v, bool)
    }
