"""Watchdog: which rank is stuck and where, and which rank is slow — from a thread of
its own, never the training thread."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import torch.distributed as dist

from .. import context
from ..context import RunContext
from ..distributed.peers import Beat, Peers, collectives_issued
from ..events import RanksSampled, Stalled
from ..recipe import Recipe
from ..run_state import ENDED
from ..stacks import innermost, thread_stacks

__all__ = ["Watchdog"]

log = logging.getLogger("evloop")


class Watchdog:
    """Watches a top-level run from a thread of its own (add it on every rank).

    When no step boundary is reached for ``stall_s`` seconds (a paused run excepted;
    the steps of a recipe registered in it, such as an inline evaluation, count), it
    publishes :class:`~evloop.events.Stalled` with every thread's stack, the training
    thread's first, and prints it — once per stall. In a distributed run each rank
    says which ranks have not reached the collective it waits in (the ranks' counts
    of issued collectives, exchanged through the job's store, never a collective), and
    rank 0 publishes the other ranks' stalls too. Every ``sample_s`` seconds each
    rank samples its time per step and the part of it its training thread was busy
    (its CPU clock: time not spent waiting for other ranks, on CPU); rank 0 publishes
    them as :class:`~evloop.events.RanksSampled`, naming the slowest rank.
    """

    def __init__(self, stall_s: float = 300.0, sample_s: float = 1.0) -> None:
        if not stall_s > 0:
            raise ValueError(f"stall_s must be positive, got {stall_s}")
        if not sample_s > 0:
            raise ValueError(f"sample_s must be positive, got {sample_s}")
        self.stall_s = stall_s
        self.sample_s = sample_s
        self._runs = 0  # top-level runs started: the same count on every rank
        self._watching: _Watch | None = None

    def on_run_start(self, state: dict[str, Any]) -> None:
        run = context.current()
        if run.nested:
            return
        if self._watching is not None:  # the last run's watch ends by itself
            self._watching.stop.set()
        self._runs += 1
        self._watching = _Watch(self, run, self._runs)
        threading.Thread(target=self._watching.watch, name="evloop-watchdog", daemon=True).start()


class _Watch:
    """One run's watch: its samples and the stall it reported."""

    def __init__(self, settings: Watchdog, run: RunContext, number: int) -> None:
        self.settings, self.run = settings, run
        self.stop = threading.Event()
        self.peers = Peers(number) if run.world.distributed else None
        self.groups = _groups_of(run)
        self.clock = _thread_clock(run.thread)
        self.rank = run.world.rank

    def watch(self) -> None:
        settings, recipe = self.settings, self.run.recipe
        tick = min(settings.sample_s, settings.stall_s / 4)
        now = time.monotonic()
        beats, moved_at, reported = _steps_of(recipe), now, False
        sampled = (now, recipe.progress.iters, self._busy())
        while not self.stop.wait(tick) and recipe.running:
            if recipe.run_state.now in ENDED:
                return
            now, seen = time.monotonic(), _steps_of(recipe)
            if seen != beats or recipe.run_state.now == "paused":
                beats, moved_at, reported = seen, now, False
            if now - sampled[0] >= settings.sample_s:
                sampled = self._sample(sampled, now)
            if not reported and now - moved_at >= settings.stall_s:
                reported = True
                self._stalled(now - moved_at)

    def _busy(self) -> float | None:
        return None if self.clock is None else _cpu_time(self.clock)

    def _sample(self, then: tuple[float, int, float | None], now: float) -> Any:
        """Post this rank's time per step since ``then``; on rank 0, publish every
        rank's and the stalls other ranks reported."""
        iters, busy = self.run.recipe.progress.iters, self._busy()
        steps = iters - then[1]
        step_s = (now - then[0]) / steps if steps > 0 else None
        busy_s = (
            (busy - then[2]) / steps
            if steps > 0 and busy is not None and then[2] is not None
            else None
        )
        if self.peers is not None:
            beat = Beat(self.rank, iters, step_s, busy_s, collectives_issued(self.groups))
            self.peers.post(beat)
            if self.rank == 0:
                self._publish_ranks(iters)
        # a step longer than sample_s is measured whole at the sample that ends it
        return (now, iters, busy) if steps > 0 else then

    def _publish_ranks(self, iters: int) -> None:
        assert self.peers is not None
        beats = self.peers.beats()
        if beats is not None:
            step_s = [b.step_s for b in beats]
            busy_s = [b.busy_s for b in beats]
            self._publish(
                RanksSampled(step=iters, step_s=step_s, busy_s=busy_s, slowest=_slowest(beats))
            )
        for report in self.peers.new_reports():
            if report.rank != self.rank:
                self._publish(report)

    def _stalled(self, seconds: float) -> None:
        """Report this rank's stall: printed, published, and told to rank 0."""
        run = self.run
        waiting_for: list[int] = []
        if self.peers is not None:
            own = Beat(self.rank, run.progress.iters, issued=collectives_issued(self.groups))
            waiting_for = self.peers.waiting_for(own)
        report = Stalled(
            rank=self.rank,
            iters=run.progress.iters,
            seconds=round(seconds, 1),
            where=innermost(run.thread),
            stack=thread_stacks(run.thread, leave_out=threading.get_ident()),
            waiting_for=waiting_for,
        )
        print(_said(report, run.world.size), file=sys.stderr, flush=True)
        self._publish(report)
        if self.peers is not None and self.rank != 0:
            self.peers.report(report)

    def _publish(self, event: Any) -> None:
        self.run.publish(event)
        self.run.bus.flush(force=True)


def _said(report: Stalled, size: int) -> str:
    who = f"rank {report.rank} of {size}: " if size > 1 else ""
    waits = ""
    if report.waiting_for:
        ranks = ", ".join(str(r) for r in report.waiting_for)
        waits = f"; waiting in a collective that rank(s) {ranks} have not reached"
    return (
        f"\nevloop: {who}no step boundary for {report.seconds:g} s (iteration "
        f"{report.iters}){waits}; in {report.where or 'an unknown place'}. Every "
        f"thread's stack, the training thread's first:\n{report.stack}"
    )


def _slowest(beats: list[Beat]) -> int:
    """The rank with the most busy time per step (others wait for it), else the
    longest step."""
    busy = [(b.busy_s, b.rank) for b in beats if b.busy_s is not None]
    if busy:
        return max(busy)[1]
    steps = [(b.step_s, b.rank) for b in beats if b.step_s is not None]
    return max(steps)[1] if steps else 0


def _steps_of(recipe: Any) -> int:
    """Steps taken by the recipe and the recipes registered in it that run in its
    thread (an inline evaluation; a concurrent one's steps are not the training's)."""
    total = recipe.progress.iters
    for name in recipe.savable_names():
        nested = getattr(recipe, name, None)
        if isinstance(nested, Recipe) and not nested.concurrent:
            total += _steps_of(nested)
    return int(total)


def _groups_of(run: RunContext) -> dict[str, Any]:
    """The process groups a training thread waits in: the default one (gradients,
    metrics, checkpoints) and the step votes'."""
    if not run.world.distributed or not dist.is_initialized():
        return {}
    groups: dict[str, Any] = {"default": dist.group.WORLD}
    vote = run.recipe.current_run.vote
    if vote is not None:
        groups["votes"] = vote.group
    return groups


def _thread_clock(thread: int) -> int | None:
    """The CPU clock of the training thread (Linux), or None."""
    try:
        return time.pthread_getcpuclockid(thread)
    except (AttributeError, OSError):
        return None


def _cpu_time(clock: int) -> float | None:
    try:
        return time.clock_gettime(clock)
    except OSError:  # the thread ended
        return None
