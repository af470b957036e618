"""The batch loop: a recipe's epochs, synchronously, in the calling thread.

It runs the ordered lane's callbacks around the forward function for each batch and
publishes typed events on the recipe's bus, building each only when a subscriber
wants it. It owns no thread and no event loop: a top-level run calls it from the
lifecycle's training thread (:mod:`evloop.lifecycle`), a nested run from the
thread of the step that runs it.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._step_timer import StepTimer
from .bus import StepGate, due
from .context import RunContext
from .distributed.vote import PREEMPTED, STOP
from .events import (
    BatchEnded,
    BatchStarted,
    EpochEnded,
    EpochStarted,
    RunFailed,
    RunFinished,
    RunStarted,
)
from .hparams import hparams_of
from .kinds import kinds_of
from .resume import (
    iterate_from,
    loader_length,
    loader_rng_state,
    rng_state,
    set_generator_states,
    set_loader_rng_state,
    set_rng_state,
)
from .runner import Hooks
from .utils import detached, send_to_device

if TYPE_CHECKING:
    from .distributed.vote import StepVote
    from .run import Run

__all__ = ["BatchLoop"]

log = logging.getLogger("evloop")


class BatchLoop:
    """Runs the epochs of ``run``'s recipe; reads the run's stop flag, vote and
    bindings from the run, and the place to resume from from the recipe's
    :class:`~evloop.resume.ResumePoint`."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.recipe = run.recipe
        self._untimed: Hooks | None = None  # the hooks last seen without a StepBreakdown

    def run_epochs(
        self, ctx: RunContext, epochs: int, first_step_checks: list[Callable[[], None]]
    ) -> bool:
        """``epochs`` epochs (finishing one interrupted mid-way counts as one); returns
        whether the run was stopped early. ``first_step_checks`` run after the first
        batch (the distributed guard)."""
        recipe, run, source = self.recipe, self.run, ctx.source
        bus, progress, runner = recipe.bus, recipe.progress, recipe.callbacks
        state, hooks = runner.state, runner.hooks()
        vote = None if ctx.nested else run.vote
        # A nested run lasts a step: whether anyone listens is decided once.
        quiet = ctx.nested and not bus.listening(source)
        if not ctx.nested:
            run.state.begin()
            recipe.controls.profiler.prepare(recipe)
        if not quiet and bus.wants(RunStarted, source=source):
            per_epoch = loader_length(recipe.loader)
            done = 0 if progress.epoch_done else progress.epoch_batch
            bus.publish(
                RunStarted(
                    epochs=epochs,
                    epoch=progress.epoch,
                    iters=progress.iters,
                    batches_per_epoch=per_epoch,
                    total_batches=None if per_epoch is None else epochs * per_epoch - done,
                    hparams={} if ctx.nested else hparams_of(recipe, epochs),
                    settings={} if ctx.nested else recipe.controls.describe(),
                    domains={} if ctx.nested else recipe.controls.domains(),
                    pid=os.getpid(),
                    host=socket.gethostname(),
                    source=source,
                )
            )
        try:
            if not ctx.nested:  # in the run's context: a schedule is scaled by as much
                recipe.controls.apply_forked(ctx)
            for handler in hooks.run_start:
                handler(state)
            if not quiet and not ctx.nested:  # seen now, not after a first slow step
                bus.flush(force=True)
            completed = True
            for _ in range(epochs):
                completed = self._epoch(ctx, hooks, quiet, first_step_checks)
                if completed and vote is not None:
                    agreed = vote.settle(run.stop_vote, recipe.controls.take())
                    self._agree(ctx, vote, agreed)
                if not completed or run.stop_requested:
                    break
            stopped = not completed or run.stop_requested
            if vote is not None:  # nothing left in flight between runs
                _, late = vote.settle(run.stop_vote, [])
                if ctx.world.is_main:
                    recipe.controls.requeue(late)
            if stopped and not ctx.nested:
                run.state.change(ctx, "stopping", run.stop_reason)
            if not ctx.nested and recipe.controls.profiler.active:
                recipe.controls.profiler.finish(ctx, "the run ended before the last step")
            for handler in hooks.run_end:
                handler(state)
            if not quiet and bus.wants(RunFinished, source=source):
                metrics = detached(state["metrics"])
                bus.publish(
                    RunFinished(
                        epoch=progress.epoch,
                        iters=progress.iters,
                        stopped=stopped,
                        reason=run.stop_reason if stopped else "",
                        metrics=metrics,
                        kinds=kinds_of(metrics),
                        source=source,
                    )
                )
            if not ctx.nested:
                run.state.end("stopped" if stopped else "finished")
            return stopped
        except BaseException as error:
            if not ctx.nested:
                run.state.end("failed")
                recipe.controls.profiler.released()
            _tell_failure(runner.handlers("on_run_failed"), state, error)
            if bus.wants(RunFailed, source=source):
                bus.publish(
                    RunFailed(
                        epoch=progress.epoch,
                        iters=progress.iters,
                        error=repr(error),
                        traceback="".join(traceback.format_exception(error)),
                        source=source,
                    )
                )
            raise
        finally:
            if not quiet:  # a nested run's events go with the outer step's wake-up
                bus.flush(force=not ctx.nested)

    def counters(self) -> dict[str, int]:
        """The x-axis of events: the state's counters (Counter, or copied in by an
        evaluation), else the recipe's progress."""
        state, progress = self.recipe.callbacks.state, self.recipe.progress
        return {
            "epoch": state.get("epoch", progress.epoch),
            "iters": state.get("iters", progress.iters),
            "epoch_batch": state.get("epoch_batch", progress.epoch_batch),
        }

    def _batches(self, keeps_rng: bool) -> Iterator[Any]:
        """This epoch's batches: a fresh epoch, or the rest of one resumed mid-way."""
        recipe = self.recipe
        loader, progress = recipe.loader, recipe.progress
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if callable(set_epoch):  # DistributedSampler: a new order each epoch
            set_epoch(progress.epoch)
        point = recipe.resume_point
        resume_rng, point.rng = point.rng, None
        generators, point.generators = point.generators, None
        if progress.epoch_batch == 0:
            if generators is not None:  # a seeded loader resumed at an epoch's end
                set_generator_states(loader, generators)
            # RNG states are the process's: only the outermost recipe saves them
            point.epoch_rng = loader_rng_state(loader) if keeps_rng else None
            if resume_rng is not None:
                set_rng_state(resume_rng)
            return iter(loader)
        if point.epoch_rng is None:  # the rest of an epoch, in the loader's present order
            return iterate_from(loader, progress.epoch_batch)
        return self._resumed_batches(point.epoch_rng, resume_rng)

    def _resumed_batches(
        self, epoch_rng: dict[str, Any], resume_rng: dict[str, Any] | None
    ) -> Iterator[Any]:
        loader = self.recipe.loader
        now = resume_rng if resume_rng is not None else rng_state()
        set_loader_rng_state(loader, epoch_rng)
        batches = iterate_from(loader, self.recipe.progress.epoch_batch)
        first = next(batches, _END)  # the loader draws its order here
        set_rng_state(now)
        if first is not _END:
            yield first
            yield from batches

    def _epoch(
        self,
        ctx: RunContext,
        hooks: Hooks,
        quiet: bool,
        first_step_checks: list[Callable[[], None]],
    ) -> bool:
        """One epoch (or the rest of one); False when it was stopped before its end."""
        recipe, source = self.recipe, ctx.source
        runner, bus, progress = recipe.callbacks, recipe.bus, recipe.progress
        state = runner.state
        if progress.epoch_done:
            progress.epoch += 1
            progress.epoch_batch = 0
            progress.epoch_done = False
            for handler in hooks.epoch_start:
                handler(state)
            if not quiet and bus.wants(EpochStarted, source=source):
                bus.publish(EpochStarted(**self.counters(), source=source))
        on_batch_start, on_batch_end = hooks.batch_start, hooks.batch_end
        on_batch_done = hooks.batch_done
        fresh_epoch = progress.epoch_batch == 0
        output_keys = runner.output_keys
        run = self.run
        device, call_fun, bindings = recipe.device, recipe.call_fun, run.bindings
        controls = recipe.controls
        vote, means = None if ctx.nested else run.vote, ctx.means
        # Who wants this step's events, asked again only when a subscription changed.
        routes_seen = -1
        started: StepGate = ()
        ended: StepGate = ()
        batches = self._batches(keeps_rng=not (ctx.nested or recipe.is_nested))
        hooked = (on_batch_start, on_batch_end, on_batch_done)
        timer: StepTimer | None = None
        plain: Any = None  # the handlers of a step, as they are and timed
        timed: Any = None
        if hooks is not self._untimed:  # else looked already (a nested run's every step)
            timer, plain, timed = _step_timer(runner, hooked, call_fun)
            self._untimed = hooks if timer is None else None
        if timer is not None:
            batches = timer.batches(batches, lambda: progress.iters, lambda: controls.pauses)
        profiler = None if ctx.nested else controls.profiler
        for batch in batches:
            if timer is not None:  # a sampled step runs its handlers timed
                on_batch_start, on_batch_end, on_batch_done, call_fun = (
                    timed if timer.sampling else plain
                )
            state["batch"] = batch
            batch = send_to_device(batch, device, non_blocking=True)
            state["_batch_gpu"] = batch
            progress.iters += 1
            progress.epoch_batch += 1
            if not quiet and bus.revision != routes_seen:
                routes_seen = bus.revision
                started, ended = bus.gate(BatchStarted, source), bus.gate(BatchEnded, source)
            for handler in on_batch_start:
                handler(state)
            if started and due(started, progress.iters):
                bus.publish(BatchStarted(**self.counters(), source=source))
            out = call_fun(batch, **bindings) if bindings else call_fun(batch)
            if out is not None:
                if type(out) is not dict:
                    _check_output(out, call_fun)
                state.update(out)
                output_keys.update(out)
            for handler in on_batch_end:
                handler(state)
            if means is not None:
                means.reduce(state["metrics"], progress.iters)
            for handler in on_batch_done:
                handler(state)
            if first_step_checks:
                checks = list(first_step_checks)
                first_step_checks.clear()
                for check in checks:
                    check()
            if not quiet:
                if ended and due(ended, progress.iters) and (means is None or means.fresh):
                    self._publish_metrics(BatchEnded, state, source)
                bus.flush()
            if profiler is not None and profiler.active:
                profiler.step(ctx)
            if vote is not None:  # distributed: every rank acts at the same boundary
                if self._agree(ctx, vote, vote.step(run.stop_vote, controls.take())):
                    return False
            else:
                if controls.pending or controls.paused:
                    controls.apply(ctx, state)
                if run.stop_requested:
                    return False
        if fresh_epoch and progress.epoch_batch == 0:
            raise ValueError(_empty_loader(recipe.loader, progress.epoch))
        progress.epoch_done = True
        for handler in hooks.epoch_end:
            handler(state)
        for handler in hooks.epoch_done:
            handler(state)
        if not quiet:
            if bus.wants(EpochEnded, source=source):
                self._publish_metrics(EpochEnded, state, source)
            bus.flush(force=not ctx.nested)
        return True

    def _agree(self, ctx: RunContext, vote: StepVote, agreed: tuple[int, list[Any]]) -> bool:
        """Act on what the ranks agreed at a step boundary: rank 0's commands, applied
        on every rank, and a stop (or a preemption) asked on any rank. Returns whether
        the run stops."""
        recipe = self.recipe
        stop, commands = agreed
        if commands:
            state = recipe.callbacks.state
            if recipe.controls.apply_agreed(ctx, state, commands, vote.exchange):
                stop = max(stop, STOP)
        if stop == PREEMPTED:  # every rank, at this same boundary
            recipe.preempt("on another rank")
        elif stop:
            recipe.stop("another rank asked to stop")
        return bool(stop)

    def _publish_metrics(
        self, event_type: type[BatchEnded | EpochEnded], state: dict[str, Any], source: str
    ) -> None:
        metrics = detached(state["metrics"])
        self.recipe.bus.publish(
            event_type(**self.counters(), metrics=metrics, kinds=kinds_of(metrics), source=source)
        )


_END = object()


def _step_timer(runner: Any, hooks: tuple[Any, ...], call_fun: Any) -> tuple[Any, Any, Any]:
    """A ``StepBreakdown``'s timer (None when there is none), the plain batch handlers
    and forward function, and the timed ones of a sampled step."""
    plain = (*hooks, call_fun)
    for callback in runner.callbacks():
        timer = getattr(callback, "step_timer", None)
        if isinstance(timer, StepTimer):
            callbacks = list(runner.callbacks())
            timed = timer.wrap(callbacks, hooks, call_fun, callback.optimizers())
            return timer, plain, timed
    return None, plain, plain


def _tell_failure(
    handlers: tuple[Callable[..., Any], ...], state: dict[str, Any], error: BaseException
) -> None:
    """``on_run_failed(state, error)`` of the callbacks that have one, before the
    failure is published: they may add notes to the error (a memory snapshot's path).
    One that raises is logged: the run's own error is the one that counts."""
    for handler in handlers:
        try:
            handler(state, error)
        except Exception:
            log.exception("on_run_failed of %r raised", getattr(handler, "__self__", handler))


def _empty_loader(loader: Any, epoch: int) -> str:
    size = f" of {len(loader)} batches" if hasattr(loader, "__len__") else ""
    hint = ""
    if getattr(loader, "drop_last", False):
        hint = " (drop_last=True with fewer samples than batch_size?)"
    return f"the loader{size} yielded no batch in epoch {epoch}: {type(loader).__name__}{hint}"


def _check_output(out: Any, call_fun: Callable[..., Any]) -> None:
    if not isinstance(out, dict):
        name = getattr(call_fun, "__name__", "the forward function")
        raise TypeError(
            f"{name} must return a dict of outputs (or None), got a {type(out).__name__}: "
            f"return e.g. {{'loss': loss}}"
        )
