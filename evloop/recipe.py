"""Recipe: Torchélie's face — register, state_dict, to, run, arun — and the registry of
what is saved; a run's own state and steps are its :class:`~evloop.run.Run`, its batch
loop :mod:`evloop.loop`, its event loop and threads :mod:`evloop.lifecycle`.

A recipe run from inside another one's step (an evaluation, a GAN's generator step)
is a plain call: its batch loop runs in the caller's thread and publishes on the
outer run's bus. Only a top-level ``run()``/``arun()`` has a lifecycle.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict
from typing import Any

from . import context, lifecycle
from ._compiling import compile_recipe
from .arguments import check_recipe_arguments, check_resume, epochs_to_run
from .autoresume import resume_auto
from .bus import Bus
from .consumers import DRAIN_LOSSLESS_S, DRAIN_LOSSY_S
from .context import Progress
from .control import Controls
from .distributed import DEFAULT_TIMEOUT, init_from_env, publishes_here
from .distributed.fsdp import BlockPolicy
from .distributed.plugin import strategy_for, warn_without_sampler
from .distributed.reduce import REDUCE_EVERY
from .distributed.strategy import Strategy
from .host import EventCopies
from .preemption import Preemption
from .registry import RecipeBase, check_is_state_dict
from .resume import ResumePoint, generator_states, progress_from_counter, rng_state
from .run import Run
from .run_state import RunState
from .runner import CallbacksRunner
from .tracebacks import trimmed

__all__ = ["RecipeBase", "Recipe", "Progress"]


class Recipe(RecipeBase):
    """``Recipe(call_fun, loader)``: for each batch, ``call_fun(device_batch) -> dict``.

    ``recipe.callbacks`` holds the ordered lane and the shared ``state``;
    ``recipe.bus`` the async lane. ``run(epochs)`` for scripts and notebooks,
    ``await arun(epochs)`` inside an async app.

    ``call_fun`` may also take registered objects by name, as keyword parameters
    (``def test_pass(batch, model): ...``): the recipe passes them, and a concurrent
    :class:`~evloop.callbacks.CallRecipe` passes a snapshot of the modules instead.
    ``name`` tags the events of the recipe's nested runs (default: the name it is
    registered under in another recipe).
    """

    def __init__(
        self,
        call_fun: Callable[..., dict[str, Any] | None],
        loader: Iterable[Any],
        name: str | None = None,
    ) -> None:
        check_recipe_arguments(call_fun, loader, name)
        super().__init__()
        self.call_fun = call_fun
        self.loader = loader
        self.name = name
        self.bus = Bus(prepare=EventCopies().to_host)
        self.callbacks = CallbacksRunner(self.bus)
        self.progress = Progress()
        self.resume_point = ResumePoint()
        """The RNG states an exact resume needs beside ``progress`` (see
        :class:`~evloop.resume.ResumePoint`)."""
        self.grad_enabled: bool | None = None
        """None: the caller's grad mode; False: the run is under ``torch.no_grad()``."""
        self.publish_on_all_ranks = False
        """In a distributed run, whether ranks other than 0 publish events too."""
        self.drain_lossy_s = DRAIN_LOSSY_S
        """At a run's end, how long display subscribers (``latest``, ``drop_oldest``)
        may take to deliver what is left before they are abandoned (and reported)."""
        self.drain_lossless_s = DRAIN_LOSSLESS_S
        """The same for lossless subscribers (``block``: event logs, writers)."""
        self.hparams: dict[str, Any] = {}
        """Hyper-parameters to record with each run (beside what the recipe knows)."""
        self.reduce_every = REDUCE_EVERY
        self._parallel: Strategy | None = None
        self.current_run = Run(self)
        """The run under way, or the last one: its state, its stop flag, what the
        forward function receives by name (see :mod:`evloop.run`)."""
        self.bus.stop_requested = lambda: self.current_run.stop_requested
        self.preemption = Preemption()
        """Which signals preempt a script's run, its grace period, its exit code (see
        :mod:`evloop.preemption`)."""
        self._nested = False  # registered in another recipe, which saves the RNG states
        self._by_name: tuple[Callable[..., Any], int, tuple[str, ...]] | None = None
        self.controls = Controls()
        """What controllers may change while it runs, and their commands (see
        :mod:`evloop.control`)."""
        self.resumed_from: str | None = None
        """The checkpoint ``run(resume='auto')`` loaded (None: none)."""
        self.training_thread: int | None = None
        """The ident of the thread a top-level run trains in, while it runs."""
        self._savable["callbacks"] = None  # saved like registered objects
        self._savable["controls"] = None
        self.callbacks.state["_loader"] = loader

    @property
    def state(self) -> dict[str, Any]:
        """Torchélie's shared ``state`` dict: the batch, the forward function's outputs,
        ``metrics``, the counters (the dict callbacks receive; live, not a copy)."""
        return self.callbacks.state

    @property
    def run_state(self) -> RunState:
        """Where the top-level run stands (``run_state.now``: idle, running, paused,
        stopping, finished, stopped, failed)."""
        return self.current_run.state

    @property
    def concurrent(self) -> bool:
        """Whether its current run goes on beside its parent run's, in another thread
        (a concurrent evaluation)."""
        return self.current_run.concurrent

    # -- stopping -------------------------------------------------------------------
    def stop(self, reason: str = "", error: BaseException | None = None) -> None:
        """Ask the run to end at the next batch boundary (thread- and task-safe).

        ``reason`` says who asked and why (``'stop from 127.0.0.1:50112'``,
        ``'EarlyStopping: …'``): shown with the run's ``stopping`` state, recorded with
        its end (``'pruned'``, ``'preempted'``: the run's status). ``error`` is raised by
        ``run()``/``arun()`` once the run has ended cleanly (``optuna.TrialPruned`` for
        a pruned trial). The first reason and error asked for are kept."""
        self.current_run.stop(reason, error)

    def preempt(self, cause: str = "") -> None:
        """End the run as preempted (what a preemption signal does): like
        :meth:`stop`, recorded as ``preempted``, and ``run()`` then raises
        :class:`~evloop.preemption.Preempted` (exit code ``preemption.exit_code``);
        ``cause`` says what preempted it (a cloud's spot-instance notice, say)."""
        self.current_run.preempt(cause)

    @property
    def stop_requested(self) -> bool:
        """Whether the run was asked to stop."""
        return self.current_run.stop_requested

    @property
    def stop_reason(self) -> str:
        """Why the run was asked to stop (``stop(reason)``), "" when not."""
        return self.current_run.stop_reason

    @property
    def preempted(self) -> bool:
        """Whether the run under way was asked to end as preempted."""
        return self.current_run.preempted

    @property
    def is_nested(self) -> bool:
        """Registered in another recipe (whose checkpoints hold the RNG states)."""
        return self._nested

    def _adopt(self, name: str, value: Any) -> None:
        if isinstance(value, Recipe):
            value._nested = True
            value.name = value.name or name

    def parameters_by_name(self) -> tuple[str, ...]:
        """Registered names that ``call_fun`` takes as parameters."""
        known = self._by_name
        if known is None or known[0] is not self.call_fun or known[1] != self._registrations:
            registered = {**self._modules, **self._savable, **self._unsaved}
            names = tuple(n for n in _parameter_names(self.call_fun) if n in registered)
            known = self._by_name = (self.call_fun, self._registrations, names)
        return known[2]

    # -- saving ---------------------------------------------------------------------
    def state_dict(self, *, leave_out: Collection[str] = ()) -> dict[str, Any]:
        """Registered objects, callbacks' states and progress (see :class:`RecipeBase`;
        ``leave_out``: registered names not to save).

        Asked from outside a run of this recipe that goes on in another thread (the
        training loop's checkpoint while its evaluation runs concurrently), it is the
        state as of the end of the last run (or, during the first, as of its start),
        never a half-updated one.
        """
        return self.current_run.state_for_outsiders(leave_out)

    def _state_dict_now(self, leave_out: Collection[str] = ()) -> dict[str, Any]:
        state = super().state_dict(leave_out=leave_out)
        state["progress"] = asdict(self.progress)
        if not self._nested:  # RNG states are the process's: the outermost recipe keeps them
            state["progress"].update(
                rng=rng_state(),
                epoch_rng=self.resume_point.epoch_rng,
                loader_rng=generator_states(self.loader),
            )
        return state

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> Recipe:
        """Load a saved state; the next run continues where it was saved.

        Global RNG states are restored at the start of that run (so that a loader
        shuffling mid-epoch is rebuilt in the same order first).
        """
        check_is_state_dict(state_dict)
        state_dict = dict(state_dict)
        progress = state_dict.pop("progress", None)
        super().load_state_dict(state_dict, strict)
        if progress is None and "callbacks" in state_dict:  # a Torchélie checkpoint
            progress = progress_from_counter(self.callbacks.callbacks(), self.loader)
        if progress is not None:
            counters, self.resume_point = ResumePoint.split(progress)
            self.progress = Progress(**counters)
        return self

    # -- watching and scaling -------------------------------------------------------
    def serve(
        self, host: str = "127.0.0.1", port: int = 0, token: str | None = None, **options: Any
    ) -> Any:
        """``evloop.remote.serve(recipe, ...)``: the live dashboard and the event
        websocket of this recipe (see there)."""
        from .remote import serve

        return serve(self, host, port, token, **options)

    @property
    def running(self) -> bool:
        """Whether a run of this recipe is under way (it may have failed a moment ago:
        this turns False once its end is handled)."""
        return self.current_run.running

    @property
    def strategy(self) -> str | None:
        """How the modules are spread over ranks: ``'ddp'``, ``'fsdp'`` or None."""
        return None if self._parallel is None else self._parallel.key

    def distributed(
        self,
        *,
        strategy: str = "ddp",
        ddp: bool = True,
        backend: str | None = None,
        timeout: datetime.timedelta = DEFAULT_TIMEOUT,
        publish_on_all_ranks: bool = False,
        blocks: BlockPolicy = None,
        reduce_every: int = REDUCE_EVERY,
        **options: Any,
    ) -> Recipe:
        """Make this a data-parallel recipe when launched by ``torchrun`` (a no-op in a
        single process); returns the recipe.

        Joins the process group (:func:`evloop.distributed.init_from_env`), and at the
        start of each run spreads the registered modules that have trainable
        parameters over the ranks, after moving them to the recipe's device:

        * ``strategy='ddp'`` (the default) wraps each in
          ``DistributedDataParallel(**options)``; the forward function must call the
          wrapper, so take the model by name (``def forward_pass(batch, model)``);
        * ``strategy='fsdp'`` shards each with FSDP2's ``fully_shard(**options)``
          (``mp_policy=MixedPrecisionPolicy(...)``, ``offload_policy=CPUOffloadPolicy()``,
          ``reshard_after_forward``…), first the submodules ``blocks`` names (module
          types or a predicate), each a unit of its own; optimizers built before are
          pointed at the shards. Save with :class:`evloop.callbacks.ShardedCheckpoint`;
        * ``strategy='none'`` (or ``ddp=False``) leaves the modules alone.

        Metric averagers' per-batch means over ranks are reduced together, in one
        all-reduce every ``reduce_every`` steps (only those steps' ``BatchEnded`` events
        are published); epoch means at each epoch's end. A stop asked on one rank ends
        every rank at the next step boundary. A forward function that bypasses what was
        applied is detected at the first step. Give the loader a ``DistributedSampler``:
        the recipe sets its epoch. Events reach subscribers on rank 0 only unless
        ``publish_on_all_ranks``.
        """
        if reduce_every < 1:
            raise ValueError(f"reduce_every must be at least 1, got {reduce_every}")
        parallel = strategy_for(strategy, ddp, blocks, options)
        init_from_env(backend, timeout)
        self._parallel, self.reduce_every = parallel, reduce_every
        self.publish_on_all_ranks = publish_on_all_ranks
        warn_without_sampler(self.loader)
        return self

    def compile(self, whole_step: bool = False, shapes: int = 2, **options: Any) -> Recipe:
        """Compile the training step with ``torch.compile(**options)``; returns the
        recipe. Callbacks, loggers and checkpoints work as before.

        ``whole_step=True`` captures each training step as one graph: the forward
        function as written (its ``loss.backward()`` included), then what its
        ``Optimizer`` callback does (accumulation, ``grad_multiplier``, centralization,
        clipping, the update of ``SGD``, ``Adam`` or ``AdamW``, zeroing), see
        :mod:`evloop.captured_step`. Learning rates and the other hyper-parameters
        are tensors of the graph: schedulers and steering act at the next step. Steps
        before the optimizer's first run eagerly; batches of shapes beyond the first
        ``shapes`` run eagerly (said once); a step that cannot be captured (``.item()``,
        branching on a tensor, an unsupported optimizer, a ``GradScaler``) makes every
        step eager, with one warning naming the reason.

        Without it, the forward function (its forward and backward passes) and the
        optimizer steps of its ``Optimizer`` callbacks are compiled separately;
        ``mode='reduce-overhead'`` replays them as CUDA graphs on CUDA (each step
        starts a new graph step; the tensors the forward function returns are copied
        out of the graph's memory). Callbacks run outside the compiled code.

        What a compiled forward function should not do: read values on the host
        (``.item()``, ``float(loss)``, printing a tensor: each is a graph break and a
        sync), branch on tensor values, or change its batch's shapes every step (each
        new shape compiles again; ``dynamic=True`` avoids that).
        """
        compile_recipe(self, whole_step, shapes, options)
        return self

    def publishes_here(self) -> bool:
        """Whether this process publishes events (rank 0, or every rank when asked)."""
        return publishes_here(self.publish_on_all_ranks)

    # -- running --------------------------------------------------------------------
    def _epochs_to_run(self, epochs: int | None, total_epochs: int | None) -> int:
        return epochs_to_run(epochs, total_epochs, self.progress.completed_epochs)

    def run(
        self,
        epochs: int | None = None,
        *,
        total_epochs: int | None = None,
        resume: str | None = None,
    ) -> dict[str, Any]:
        """Train, then return the live ``state`` dict.

        ``run(n)`` trains ``n`` more epochs (an epoch interrupted by a checkpoint and
        resumed counts as one); ``run(total_epochs=n)`` trains until ``n`` epochs are
        complete in total, so a resumed script never trains longer than asked.

        ``resume='auto'`` (with ``total_epochs``) first loads the newest complete
        checkpoint the recipe's ``Checkpoint`` or ``ShardedCheckpoint`` wrote, skipping
        corrupt and partial ones (see :mod:`evloop.autoresume`; every rank loads the
        same one), so that a restarted job continues where it was: run the same
        command again. It loads nothing when the recipe already trained or loaded a
        state in this process.

        From a script it starts an event loop for the run's subscribers; in a notebook
        (a loop already runs in this thread) the run gets a thread of its own and this
        call waits for it; inside an async app use :meth:`arun`. In the main thread of
        a script, Ctrl-C finishes the current batch, ends the run cleanly (final
        checkpoint, lossless subscribers drained) and raises KeyboardInterrupt; a second
        Ctrl-C aborts at once. SIGTERM (the signals of ``recipe.preemption``) does the
        same, then raises :class:`~evloop.preemption.Preempted`: the process exits with
        143 to be requeued. Called from inside another recipe's run, it is a nested run
        in this thread.
        """
        count = self._epochs_to_run(epochs, total_epochs)
        check_resume(resume, epochs)
        outer = context.current_or_none()
        if outer is not None:
            return self.current_run.run_nested(outer, count)
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        try:
            if resume is not None:
                resume_auto(self)
                count = self._epochs_to_run(epochs, total_epochs)
            state = lifecycle.run_blocking(self, count)
        except (Exception, KeyboardInterrupt) as error:
            failure = trimmed(error)
        else:
            return self.current_run.outcome(state)
        raise failure  # the engine's frames are hidden: EVLOOP_TRACEBACK=full shows them

    async def arun(
        self,
        epochs: int | None = None,
        *,
        total_epochs: int | None = None,
        resume: str | None = None,
    ) -> dict[str, Any]:
        """Train without blocking the event loop; same arguments as :meth:`run`.

        Cancelling the calling task stops training at the next batch boundary; the run
        still ends cleanly (``RunFinished(stopped=True)``, subscribers drained) before
        the cancellation propagates.
        """
        count = self._epochs_to_run(epochs, total_epochs)
        check_resume(resume, epochs)
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        try:
            if resume is not None:
                await lifecycle.in_own_thread(resume_auto, self)
                count = self._epochs_to_run(epochs, total_epochs)
            state = await lifecycle.run_async(self, count)
        except (Exception, KeyboardInterrupt) as error:
            failure = trimmed(error)
        else:
            return self.current_run.outcome(state)
        raise failure  # the engine's frames are hidden: EVLOOP_TRACEBACK=full shows them


def _parameter_names(call_fun: Callable[..., Any]) -> tuple[str, ...]:
    try:
        parameters = list(inspect.signature(call_fun).parameters.values())[1:]
    except (TypeError, ValueError):  # builtins without a signature
        return ()
    return tuple(p.name for p in parameters)
