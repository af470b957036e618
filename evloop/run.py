"""A recipe's run: everything that exists only while it runs, in one place.

:class:`Run` holds the run's state (:class:`~evloop.run_state.RunState`), its one
stop flag (the bus reads it), the objects its forward function receives by name, and
how it shares its state with a parent run going on beside it (a concurrent
evaluation). It also holds the steps of a run: :meth:`Run.begin` and :meth:`Run.end`
around every run, :meth:`Run.start_plugins` and :meth:`Run.execute` in the training
thread of a top-level run, :meth:`Run.run_nested` for a run inside another one's
step, :meth:`Run.reserve` for a run about to start in another thread.

A recipe has one ``Run`` (``recipe.current_run``), reset as each run begins; what a
run leaves (its final state, why it stopped) stays readable after it ended.

Which state outsiders see: while a concurrent run is under way (or reserved), a
``state_dict()`` asked from another thread is the state as of the end of the last
completed run (before the first: as of its start), never a half-updated one.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import torch

from . import context
from .context import RunContext
from .distributed import world
from .distributed.agreement import agree_on_exchanges
from .distributed.vote import PREEMPTED, STOP, StepVote
from .loop import BatchLoop
from .preemption import PREEMPTED_REASON, Preempted
from .run_state import RunState

if TYPE_CHECKING:
    from .recipe import Recipe

__all__ = ["Run", "STATE_WAIT_S"]

STATE_WAIT_S = 600.0  # how long a checkpoint waits for a first concurrent evaluation


class Run:
    """The run of ``recipe`` under way, or the last one (see the module's docstring)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.state = RunState()
        """Where the top-level run stands (``state.now``: idle, running, paused,
        stopping, finished, stopped, failed)."""
        self.bindings: dict[str, Any] = {}
        """Objects passed by name to the forward function during the run."""
        self.overrides: dict[str, Any] = {}
        """Objects passed by name instead of the registered ones (a weight snapshot);
        set by a concurrent evaluation for its run."""
        self.concurrent = False
        """Whether the run goes on beside its parent run's, in another thread."""
        self.vote: StepVote | None = None
        """In a distributed run: how the ranks agree at step boundaries."""
        self.stop_requested = False
        """The one stop flag: the loop ends at the next batch boundary once set."""
        self.stop_reason = ""
        """Why the run was asked to stop, "" when not."""
        self._stop_error: BaseException | None = None
        self._running = False
        self._reserved = False
        self._idle = threading.Event()
        self._idle.set()
        self._completed_state: dict[str, Any] | None = None
        self._nested_ctx: RunContext | None = None  # the last one, reused under one parent
        self._loop = BatchLoop(self)

    @property
    def running(self) -> bool:
        """Whether the run is under way (False once its end is handled)."""
        return self._running

    # -- stopping -------------------------------------------------------------------
    def stop(self, reason: str = "", error: BaseException | None = None) -> None:
        """Ask the run to end at the next batch boundary (see :meth:`Recipe.stop`);
        the first reason and error asked for are kept."""
        self.stop_reason = self.stop_reason or reason
        self._stop_error = self._stop_error or error
        self.stop_requested = True

    def preempt(self, cause: str = "") -> None:
        """End the run as preempted (see :meth:`Recipe.preempt`)."""
        self.stop(PREEMPTED_REASON, Preempted(self.recipe.preemption.exit_code, cause))

    @property
    def preempted(self) -> bool:
        """Whether the run was asked to end as preempted."""
        return isinstance(self._stop_error, Preempted)

    @property
    def stop_vote(self) -> int:
        """What this rank asks the others at a step vote: 0, a stop, a preemption."""
        if not self.stop_requested:
            return 0
        return PREEMPTED if self.preempted else STOP

    def outcome(self, state: dict[str, Any]) -> dict[str, Any]:
        """What a finished top-level run returns: ``state``, or the error its stop
        asked for (raised)."""
        error, self._stop_error = self._stop_error, None
        if error is not None:
            raise error
        return state

    # -- the steps of a run ---------------------------------------------------------
    def reserve(self) -> None:
        """Announce a run about to start in another thread (a concurrent evaluation
        handed to its worker): from now on outsiders see the state of the last
        completed run (before the first one: the state it starts from), never a
        half-updated one, and never wait for a run under way."""
        if self._completed_state is None:
            self._completed_state = copy.deepcopy(self.recipe._state_dict_now())
        self.concurrent = True
        self._idle.clear()
        self._reserved = True

    def begin(self, concurrent: bool = False, nested: bool = False) -> None:
        """Mark the recipe running (a second run at once is an error); ``concurrent``:
        in another thread than its parent run's, which may read its state meanwhile."""
        self._reserved = False
        if self._running:
            raise RuntimeError("this recipe is already running")
        recipe = self.recipe
        recipe.callbacks.refresh()
        recipe.controls.refresh(recipe.callbacks.callbacks(), same_callbacks_same_settings=nested)
        self.stop_requested, self.stop_reason, self._stop_error = False, "", None
        self.concurrent = concurrent
        if concurrent:
            self._idle.clear()
        self._running = True

    def end(self, concurrent: bool = False) -> None:
        """The run ended (however it did)."""
        if concurrent:  # what the parent run's checkpoints save until the next run ends
            self._completed_state = copy.deepcopy(self.recipe._state_dict_now())
            self._idle.set()
        self._running = False

    def start_plugins(self) -> list[Callable[[], None]]:
        """At a top-level run's start, in its training thread: place the registered
        objects, spread them over ranks; returns the checks to run after the first
        step."""
        recipe = self.recipe
        recipe.place()
        if world().distributed:
            if self.vote is None:
                self.vote = StepVote()
            agree_on_exchanges(recipe, self.vote)
        parallel = recipe._parallel
        guard = parallel.start(recipe) if parallel is not None else None
        return [guard] if guard is not None else []

    def execute(
        self, ctx: RunContext, epochs: int, grad_enabled: bool, checks: list[Callable[[], None]]
    ) -> bool:
        """Run the batch loop in this thread, as the run ``ctx``; returns whether it
        was stopped early."""
        recipe = self.recipe
        if not self.overrides:  # never touch live modules from an evaluation thread
            recipe.place()
        names = recipe.parameters_by_name()
        if names:
            self.bindings = {
                name: self.overrides.get(name, recipe.__dict__[name]) for name in names
            }
        previous_grad, previous_ctx = torch.is_grad_enabled(), context.enter(ctx)
        if grad_enabled != previous_grad:
            torch.set_grad_enabled(grad_enabled)
        try:
            return self._loop.run_epochs(ctx, epochs, checks)
        finally:
            if grad_enabled != previous_grad:
                torch.set_grad_enabled(previous_grad)
            context.enter(previous_ctx)
            self.bindings = {}

    def run_nested(self, outer: RunContext, epochs: int) -> dict[str, Any]:
        """A run inside ``outer``'s step, in this thread: it publishes on the outer
        run's bus and its subscribers are adopted by the outer run."""
        recipe = self.recipe
        concurrent = threading.get_ident() != outer.root_thread
        self.begin(concurrent, nested=True)
        ctx = self._nested_ctx
        if ctx is None or ctx.parent is not outer:
            ctx = self._nested_ctx = RunContext(recipe, parent=outer)
        recipe.bus.link(outer.bus)
        if recipe.bus.subscriptions:
            outer.adopt(recipe.bus)
        try:
            grad = torch.is_grad_enabled() if recipe.grad_enabled is None else recipe.grad_enabled
            self.execute(ctx, epochs, grad, [])
        finally:
            recipe.bus.unlink()
            self.end(concurrent)
        return recipe.callbacks.state

    # -- the state outsiders see ----------------------------------------------------
    def state_for_outsiders(self, leave_out: Collection[str]) -> dict[str, Any]:
        """The recipe's state as a caller outside a concurrent run sees it (see the
        module's docstring)."""
        recipe = self.recipe
        if (self._running or self._reserved) and self.concurrent and not self._inside():
            if self._completed_state is not None:
                return copy.deepcopy(self._completed_state)
            if not self._idle.wait(STATE_WAIT_S):
                raise TimeoutError(
                    f"{recipe.name or 'the recipe'} is still in its first run after "
                    f"{STATE_WAIT_S:.0f} s: its state cannot be saved half-updated"
                )
        return recipe._state_dict_now(leave_out)

    def _inside(self) -> bool:
        ctx = context.current_or_none()
        return ctx is not None and ctx.includes(self.recipe)
