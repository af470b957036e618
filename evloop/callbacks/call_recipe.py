"""CallRecipe: run another recipe (an evaluation) every N iterations.

``mode='concurrent'`` evaluates a snapshot of the weights in its own thread while
training goes on; ``mode='inline'`` runs it inside the training step, as Torchélie.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import context
from ..context import RunContext
from ..control import Setting
from ..distributed import world
from ..events import EvalFinished, EvalSkipped
from ..host import HostCopy
from ..kinds import kinds_of
from ..resume import rng_state, set_rng_state
from ..utils import unwrap_module
from ._evaluation_thread import EvaluationThread

__all__ = ["CallRecipe", "Evaluation", "copy_counters"]

MODES = ("inline", "concurrent")
log = logging.getLogger("evloop")


def copy_counters(loop: Any) -> Callable[[dict[str, Any]], None]:
    """The default ``init_fun``: the evaluation's loggers use the training x-axis."""

    def init(state: dict[str, Any]) -> None:
        for key in ("epoch", "iters", "epoch_batch"):
            if key in state:
                loop.callbacks.state[key] = state[key]

    return init


@dataclass
class Evaluation:
    """One evaluation by a :class:`CallRecipe`, as the ordered lane's
    ``on_eval_start(state, evaluation)`` and ``on_eval_end(state, evaluation)`` hooks
    receive it (in the training thread).

    ``on_eval_start`` comes when the weights of iteration ``iters`` are taken for
    evaluation — they are the live weights at that moment; ``on_eval_end`` when its
    ``metrics`` are in ``state[prefix + '_metrics']``: at once for an inline evaluation,
    at a later step for a concurrent one (the live weights have moved on since).
    """

    prefix: str
    epoch: int
    iters: int
    mode: str
    """``'inline'`` or ``'concurrent'``."""
    loop: Any
    """The evaluated recipe."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Its final metrics (set by ``on_eval_end``)."""


class CallRecipe:
    """Every ``run_every`` iterations (iteration 0 included), or at each epoch end with
    ``run_every='epoch'``, run ``loop`` for one epoch and put its final metrics in
    ``state[prefix + '_metrics']``.

    ``mode='concurrent'``: the loop's forward function receives the modules it takes by
    name (``def test_pass(batch, model)``) as a snapshot of the weights at that step —
    a copy made once and refreshed by copying tensors — and runs in its own thread
    while training continues. Its results come back at the next training step as an
    :class:`~evloop.events.EvalFinished` event tagged with the snapshot's iteration.
    If the previous evaluation is still running when the next is due, the new one is
    skipped, counted in :attr:`skipped` and reported as ``EvalSkipped``: there is never
    more than one snapshot. A run waits for a running evaluation before it returns.

    ``mode='inline'``: the evaluation runs inside the step and training waits
    (Torchélie's behaviour; no extra copy of the model in memory). It is the only mode
    for a forward function that closes over the live model. Unlike Torchélie's, it
    leaves the global random generators as it found them: a run trains the same with
    or without its evaluations (the evaluation's loader draws a seed, a test-time
    augmentation draws more), and a run resumed after one continues exactly. A
    concurrent evaluation's loader (and sampler) that has no random generator of its
    own is given one (seeded by ``torch.initial_seed()``), since its seed would be drawn
    from training's generator at a moment that depends on timing; random draws of its
    forward function itself still come from the global generators.

    The default is concurrent when the forward function takes registered modules by
    name, inline otherwise. In a distributed run evaluations are inline, on every rank
    at the same step: their averages are all-reduced, and collectives from another
    thread would race the training step's. Unless ``at_end=False``, a run also ends
    with an evaluation of its final weights when its last iteration was not evaluated
    already.

    Each evaluation is announced to the training recipe's callbacks with an
    :class:`Evaluation` (``on_eval_start`` and ``on_eval_end``): a ``Checkpoint``
    following it saves the very weights it scored.

    ``timeout_s``: how long the run's end waits for a concurrent evaluation still
    running (None: as long as it takes, saying every 30 s what it waits for). Past it
    the run ends without that result, says so, and leaves the evaluation to finish in
    its thread.
    """

    exchanges_between_ranks = True
    """In a distributed run it takes part in collectives: every rank must have it."""

    def __init__(
        self,
        loop: Any,
        run_every: int | str = 100,
        prefix: str = "test",
        init_fun: Callable[[dict[str, Any]], None] | None = None,
        mode: str | None = None,
        at_end: bool = True,
        timeout_s: float | None = None,
    ) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive (or None), got {timeout_s!r}")
        if not callable(getattr(loop, "run", None)):
            raise TypeError(f"CallRecipe runs a recipe (anything with run()), got {loop!r}")
        if run_every != "epoch" and not (isinstance(run_every, int) and run_every >= 1):
            raise ValueError(f"run_every must be 'epoch' or at least 1, got {run_every!r}")
        by_name = getattr(loop, "parameters_by_name", None)  # an evloop recipe
        snapshot_names = [
            name
            for name in (by_name() if callable(by_name) else ())
            if isinstance(getattr(loop, name), torch.nn.Module)
        ]
        if mode is None:
            mode = "concurrent" if snapshot_names else "inline"
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "concurrent" and not snapshot_names:
            name = getattr(getattr(loop, "call_fun", None), "__name__", "the forward function")
            raise ValueError(
                f"CallRecipe(mode='concurrent') evaluates a snapshot of the weights, so "
                f"{name} must take the recipe's registered modules by name "
                f"(e.g. `def {name}(batch, model)` after `loop.register('model', model)`); "
                f"it takes none. Use mode='inline' to evaluate the live model in the step."
            )
        self.loop = loop
        self.run_every = run_every
        self.prefix = prefix
        if init_fun is None:  # a recipe's loggers use the training x-axis
            init_fun = copy_counters(loop) if hasattr(loop, "callbacks") else _nothing
        self.init_fun = init_fun
        self.mode = mode
        self.snapshot_names = snapshot_names
        self.skipped = 0
        self.at_end = at_end
        self.timeout_s = timeout_s
        self._evaluated: int | None = None  # the iteration of the last evaluation
        self._snapshots: dict[str, torch.nn.Module] = {}
        self._evaluations = EvaluationThread(f"evloop-eval-{prefix}")
        self._result: tuple[Evaluation, Any, float, BaseException | None] | None = None
        self._stream: Any = None

    @property
    def state_key(self) -> str:
        return f"CallRecipe[{self.prefix}]"

    def on_batch_end(self, state: dict[str, Any]) -> None:
        self._collect(state)
        every = self.run_every
        if not isinstance(every, int) or _iters(state) % every != 0:
            return
        self.evaluate_now(state)

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        if self.run_every == "epoch":
            self.evaluate_now(state)

    def controls(self) -> list[Setting]:
        """``<prefix>.run_every``, changeable while the recipe runs."""

        def set_every(value: int) -> None:
            self.run_every = value

        return [Setting(f"{self.prefix}.run_every", lambda: self.run_every, set_every, int, 1)]

    def evaluate_now(self, state: dict[str, Any]) -> None:
        """Evaluate at this step (a controller's ``eval`` command)."""
        if self.inline:
            self._run_inline(state)
        else:
            self._launch(state)

    @property
    def inline(self) -> bool:
        return self.mode == "inline" or world().distributed

    def on_run_end(self, state: dict[str, Any]) -> None:
        if not self._finished_in_time():
            return
        self._collect(state)
        iters = _iters(state)
        if self.at_end and iters >= 0 and self._evaluated != iters:
            # the final metrics are those of the final weights
            if self.inline:
                self._run_inline(state)
            else:
                self._launch(state)
                if self._finished_in_time():
                    self._collect(state)

    def _finished_in_time(self) -> bool:
        """Wait for the evaluation in progress, at most ``timeout_s``."""
        what = f"evaluation {self.prefix!r}"
        if self._evaluations.wait(what, self.timeout_s):
            return True
        log.error(
            "%s still running after %g s (timeout_s): the run ends without its result",
            what,
            self.timeout_s,
        )
        return False

    # -- inline -----------------------------------------------------------------------
    def _run_inline(self, state: dict[str, Any]) -> None:
        evaluation = self._announce_start(state, "inline")
        self.init_fun(state)
        start = time.perf_counter()
        training_rng = rng_state()  # an evaluation leaves training's random draws alone
        try:
            out = self.loop.run(1)
        except Exception as error:
            raise RuntimeError(f"evaluation {self.prefix!r} failed: {error!r}") from error
        finally:
            set_rng_state(training_rng)
        self._install(state, evaluation, out["metrics"], time.perf_counter() - start)

    def _announce_start(self, state: dict[str, Any], mode: str) -> Evaluation:
        """The weights of this step are taken for evaluation: tell the callbacks."""
        self._evaluated = _iters(state)
        evaluation = Evaluation(self.prefix, _epoch(state), _iters(state), mode, self.loop)
        context.current().recipe.callbacks("on_eval_start", evaluation)
        return evaluation

    # -- concurrent -------------------------------------------------------------------
    def _launch(self, state: dict[str, Any]) -> None:
        if self._evaluations.busy:
            self.skipped += 1
            context.current().publish(
                EvalSkipped(prefix=self.prefix, iters=_iters(state), skipped=self.skipped)
            )
            return
        snapshots = self._refresh_snapshots()
        _own_generators(getattr(self.loop, "loader", None))
        self.init_fun(state)
        ready = None
        if any(p.is_cuda for m in self._snapshots.values() for p in m.parameters()):
            ready = torch.cuda.Event()
            ready.record()
        run = getattr(self.loop, "current_run", None)
        if run is not None:  # its state is not read half-updated meanwhile
            run.reserve()
        evaluation = self._announce_start(state, "concurrent")
        self._evaluations.submit(self._evaluate, context.current(), snapshots, evaluation, ready)

    def _refresh_snapshots(self) -> dict[str, torch.nn.Module]:
        for name in self.snapshot_names:
            live = unwrap_module(getattr(self.loop, name))
            snapshot = self._snapshots.get(name)
            if snapshot is None:
                snapshot = copy.deepcopy(live).eval().requires_grad_(False)
                self._snapshots[name] = snapshot
            else:
                with torch.no_grad():
                    torch._foreach_copy_(
                        list(snapshot.state_dict().values()), list(live.state_dict().values())
                    )
        return dict(self._snapshots)

    def _evaluate(
        self,
        training: RunContext,
        snapshots: dict[str, torch.nn.Module],
        evaluation: Evaluation,
        ready: Any,
    ) -> None:
        """The evaluation thread: a run nested in the training run, without a loop of
        its own (its events go to the training run's bus)."""
        start = time.perf_counter()
        self.loop.current_run.overrides = snapshots  # the forward function receives these
        try:
            with context.entered(training):
                if ready is not None:
                    self._stream = self._stream or torch.cuda.Stream()
                    with torch.cuda.stream(self._stream):
                        self._stream.wait_event(ready)
                        out = self.loop.run(1)
                        # The training thread reads these (a plateau scheduler, the best
                        # checkpoint): hand it host values, copied on this stream.
                        metrics = HostCopy(out["metrics"]).wait()
                else:
                    metrics = self.loop.run(1)["metrics"]  # _install copies it
            self._result = (evaluation, metrics, time.perf_counter() - start, None)
        except BaseException as error:  # handed to the training thread
            self._result = (evaluation, None, time.perf_counter() - start, error)
        finally:
            self.loop.current_run.overrides = {}

    def _collect(self, state: dict[str, Any]) -> None:
        result, self._result = self._result, None
        if result is None:
            return
        evaluation, metrics, duration, error = result
        if error is not None:
            raise RuntimeError(f"evaluation {self.prefix!r} failed: {error!r}") from error
        self._install(state, evaluation, metrics, duration)

    def _install(
        self,
        state: dict[str, Any],
        evaluation: Evaluation,
        metrics: dict[str, Any],
        duration: float,
    ) -> None:
        metrics = copy.deepcopy(metrics)
        state[f"{self.prefix}_metrics"] = metrics
        run = context.current()
        run.publish(
            EvalFinished(
                prefix=self.prefix,
                epoch=evaluation.epoch,
                iters=evaluation.iters,
                metrics=metrics,
                kinds=kinds_of(metrics),
                duration=duration,
                mode=evaluation.mode,
            )
        )
        evaluation.metrics = metrics
        run.recipe.callbacks("on_eval_end", evaluation)


def _own_generators(loader: Any) -> None:
    """Give an evaluation's loader (and its sampler) a random generator of its own
    where it has none: iterating it would draw a seed from the global generator, from
    another thread, at a moment training does not control — and change training's own
    random numbers."""
    for holder in (loader, getattr(loader, "sampler", None)):
        if holder is not None and hasattr(holder, "generator") and holder.generator is None:
            holder.generator = torch.Generator().manual_seed(torch.initial_seed())


def _nothing(state: dict[str, Any]) -> None:
    pass


def _iters(state: dict[str, Any]) -> int:
    return state["iters"] if "iters" in state else context.current().progress.iters


def _epoch(state: dict[str, Any]) -> int:
    return state["epoch"] if "epoch" in state else context.current().progress.epoch
