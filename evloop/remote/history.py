"""What a late joiner needs: decimated series, the latest reports, status and health."""

from __future__ import annotations

import collections
from typing import Any

from ..events import (
    BatchEnded,
    CommandApplied,
    EpochEnded,
    EvalFinished,
    Event,
    ProfileReport,
    RanksSampled,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStateChanged,
    StepTimes,
    SubscriberDropped,
    SubscriberFailed,
    SystemSampled,
)
from ..kinds import Kind
from ..loggers.summary import ENDED_BY
from .protocol import NOTICES, Health, History, Notice, Status

__all__ = ["RunHistory", "Series"]

KEPT_NOTICES = 50
KEPT_STEPS = 300  # StepTimes samples a late joiner sees on the breakdown chart
KEPT_PROFILES = 10


class Series:
    """At most ``capacity`` points: when full, every other point goes and the stride
    doubles, so the whole run stays visible at a coarser resolution. Each point keeps
    the time it was recorded at (seconds since the first run's start)."""

    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self.points: list[tuple[int, float]] = []
        self.times: list[float] = []
        self.stride = 1
        self._seen = 0

    def add(self, x: int, y: float, seconds: float = 0.0) -> None:
        if self.points and x <= self.points[-1][0]:
            if x == self.points[-1][0]:
                self.points[-1] = (x, y)  # an epoch end repeating its last batch
            return
        if self._seen % self.stride == 0:
            self.points.append((x, y))
            self.times.append(seconds)
            if len(self.points) > self.capacity:
                self.points, self.times = self.points[::2], self.times[::2]
                self.stride *= 2
        self._seen += 1


class RunHistory:
    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self.series: dict[str, Series] = {}
        self.latest: dict[str, str] = {}
        self.status = Status()
        self.health: dict[str, Health] = {}
        self.notices: collections.deque[Notice] = collections.deque(maxlen=KEPT_NOTICES)
        self.steps: collections.deque[StepTimes] = collections.deque(maxlen=KEPT_STEPS)
        self.profiles: collections.deque[ProfileReport] = collections.deque(maxlen=KEPT_PROFILES)
        self._rate_mark: tuple[float, int] | None = None
        self._run_start_iters = -1  # the iteration the current run started after
        self._origin: float | None = None

    def update(self, event: Event, wire: tuple[dict[str, Any], dict[str, str]] | None) -> None:
        """``wire``: the event's metrics and their kinds in wire form (None for events
        without)."""
        if isinstance(event, RunStarted):
            resumed_mid_epoch = bool(
                event.total_batches
                and event.batches_per_epoch
                and event.total_batches % event.batches_per_epoch
            )
            self.status = Status(
                state="running",
                epoch=event.epoch,
                iters=event.iters,
                epochs=event.epochs,
                batches_per_epoch=event.batches_per_epoch,
                last_epoch=event.epoch + event.epochs - (1 if resumed_mid_epoch else 0),
                started=event.time,
                hparams=event.hparams,
                settings=dict(event.settings),
            )
            self._run_start_iters = event.iters
            self._rate_mark = (event.time, event.iters)
            if self._origin is None:  # the wall-time axis: from the first run's start
                self._origin = event.time
        elif isinstance(event, BatchEnded | EpochEnded):
            self._progress(event.epoch, event.iters, event.epoch_batch, event.time)
            self._record("train", event.iters, event.time, wire)
        elif isinstance(event, SystemSampled):
            self._record("system", event.step, event.time, wire)
        elif isinstance(event, RanksSampled):
            self._record_ranks(event)
        elif isinstance(event, EvalFinished):
            self._record(event.prefix, event.iters, event.time, wire)
        elif isinstance(event, RunStateChanged):
            self._state_changed(event)
        elif isinstance(event, CommandApplied):
            self._at(self.status.epoch, event.iters)
            for name, (_, new) in event.changes.items():
                if name != "state" and name in self.status.settings:
                    self.status.settings[name] = new
        elif isinstance(event, RunFinished):
            self._at(event.epoch, event.iters)
            self.status.state = "stopped" if event.stopped else "finished"
            if event.stopped and event.reason in ENDED_BY:  # a search pruned it, a scheduler
                self.status.state = event.reason  # preempted it: as summary.json says
            self.status.eta_s = 0.0 if not event.stopped else None
            self._ended(event.time)
        elif isinstance(event, RunFailed):
            self.status.state, self.status.error = "failed", event.error
            self._ended(event.time)
        elif isinstance(event, SubscriberDropped):
            self.health.setdefault(event.subscriber, Health()).dropped = event.total
        elif isinstance(event, SubscriberFailed):
            self.health.setdefault(event.subscriber, Health()).failed = event.error
        elif isinstance(event, NOTICES):
            self.notices.append(event)
        elif isinstance(event, StepTimes):
            self.steps.append(event)
        elif isinstance(event, ProfileReport):
            self.profiles.append(event)

    def _record(
        self,
        source: str,
        iters: int,
        when: float,
        wire: tuple[dict[str, Any], dict[str, str]] | None,
    ) -> None:
        values, kinds = wire or ({}, {})
        seconds = when - (self._origin if self._origin is not None else when)
        for key, value in values.items():
            name = f"{source}/{key}"
            kind = kinds.get(key)
            if kind == Kind.SCALAR:
                series = self.series.setdefault(name, Series(self.capacity))
                series.add(iters, float(value), seconds)
            elif kind in (Kind.HTML, Kind.TEXT):
                self.latest[name] = value

    def _record_ranks(self, event: RanksSampled) -> None:
        """Each rank's time per step: one series per rank and measure."""
        seconds = event.time - (self._origin if self._origin is not None else event.time)
        for measure, values in (("step_s", event.step_s), ("busy_s", event.busy_s)):
            for rank, value in enumerate(values):
                if value is not None:
                    series = self.series.setdefault(f"rank {rank}/{measure}", Series(self.capacity))
                    series.add(event.step, float(value), seconds)

    def _state_changed(self, event: RunStateChanged) -> None:
        """Paused: no pace, no ETA; running again: the pace is measured afresh."""
        self.status.state = event.state
        self._at(event.epoch, event.iters)
        if event.state == "paused":
            self.status.throughput = self.status.eta_s = None
        elif event.state == "running":
            self._rate_mark = (event.time, self.status.iters)

    def _at(self, epoch: int, iters: int) -> None:
        """Where the run is, from an event that says so between sampled steps."""
        if iters > self.status.iters:
            self.status.epoch, self.status.iters = epoch, iters

    def _ended(self, now: float) -> None:
        if self.status.started is not None:
            self.status.duration_s = max(0.0, now - self.status.started)

    def _progress(self, epoch: int, iters: int, epoch_batch: int, now: float) -> None:
        """Throughput and ETA from the events' own times: the server dispatches them
        in bursts, so its clock says nothing of the run's pace."""
        status = self.status
        status.epoch, status.iters, status.epoch_batch = epoch, iters, epoch_batch
        if status.state == "paused":
            return  # events of the step it paused after
        if self._rate_mark is not None and iters > self._rate_mark[1] and now > self._rate_mark[0]:
            then, then_iters = self._rate_mark
            rate = (iters - then_iters) / (now - then)
            status.throughput = (
                rate if status.throughput is None else 0.7 * status.throughput + 0.3 * rate
            )
            self._rate_mark = (now, iters)
            if status.epochs and status.batches_per_epoch and status.throughput:
                total = self._run_start_iters + status.epochs * status.batches_per_epoch
                status.eta_s = max(0.0, (total - iters) / status.throughput)

    def snapshot(self) -> History:
        return History(
            series={k: list(s.points) for k, s in self.series.items()},
            times={k: list(s.times) for k, s in self.series.items()},
            origin=self._origin,
            latest=dict(self.latest),
            status=Status(**{f: getattr(self.status, f) for f in self.status.__struct_fields__}),
            health={k: Health(dropped=h.dropped, failed=h.failed) for k, h in self.health.items()},
            notices=list(self.notices),
            steps=list(self.steps),
            profiles=list(self.profiles),
        )
