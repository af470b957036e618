"""Recipe: the training loop, registered objects, devices, and ``run``/``arun``.

The batch loop runs in one worker thread, driven by one task on the event loop, so
the loop stays responsive while training; subscribers of :attr:`Recipe.bus` consume
the events it publishes on that loop.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import inspect
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import torch

from .bus import Bus, Subscription, maybe_await
from .distributed import DEFAULT_TIMEOUT, init_from_env, world
from .events import (
    BatchEnded,
    BatchStarted,
    EpochEnded,
    EpochStarted,
    RunFailed,
    RunFinished,
    RunStarted,
)
from .resume import (
    iterate_from,
    loader_rng_state,
    rng_state,
    set_loader_rng_state,
    set_rng_state,
)
from .runner import CallbacksRunner
from .utils import detached, send_to_device, unwrap_module

__all__ = ["RecipeBase", "Recipe", "Progress"]

log = logging.getLogger("evloop")


@dataclass
class Progress:
    """Where the recipe stands, with Torchélie's counters.

    ``epoch`` is 0-based and ``iters`` is the 0-based index of the current (or last)
    batch; both are -1 before anything ran. ``epoch_batch`` is 1-based within the
    epoch and 0 before its first batch.
    """

    epoch: int = -1
    iters: int = -1
    epoch_batch: int = 0
    epoch_done: bool = True
    """False while the epoch ``epoch`` has batches left (a run stopped mid-epoch)."""

    @property
    def completed_epochs(self) -> int:
        return self.epoch + 1 if self.epoch_done else self.epoch


class RecipeBase:
    """Registered objects: their saving, loading and device moves."""

    def __init__(self) -> None:
        self._modules: dict[str, None] = {}  # ordered sets of names
        self._savable: dict[str, None] = {}
        self._unsaved: dict[str, None] = {}
        self.device = torch.device("cpu")

    def register(self, name: str, value: Any, *, saved: bool = True) -> None:
        """Make ``value`` part of the recipe: ``recipe.<name>``, saving and device moves.

        Modules (and objects with ``state_dict``) are saved through their state dict,
        plain values as they are; ``saved=False`` registers an object that another
        recipe already saves (a test loop's model). Registering a name again replaces
        the object.
        """
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"cannot register {name!r}: use an identifier not starting with _")
        known = name in self._modules or name in self._savable or name in self._unsaved
        if not known and hasattr(self, name):
            raise ValueError(f"cannot register {name!r}: it would hide Recipe.{name}")
        for names in (self._modules, self._savable, self._unsaved):
            names.pop(name, None)
        if hasattr(value, "_nested"):  # a recipe inside this one: its parent saves the RNG
            value._nested = True
        if not saved:
            self._unsaved[name] = None
        elif isinstance(value, torch.nn.Module):
            self._modules[name] = None
        else:
            self._savable[name] = None
        self.__dict__[name] = value

    def modules(self) -> Iterable[torch.nn.Module]:
        """Registered modules, saved or not."""
        for name in [*self._modules, *self._unsaved]:
            value = self.__dict__[name]
            if isinstance(value, torch.nn.Module):
                yield value

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for name in self._modules:
            state[name] = unwrap_module(self.__dict__[name]).state_dict()
        for name in self._savable:
            value = self.__dict__[name]
            state[name] = value.state_dict() if hasattr(value, "state_dict") else value
        return state

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> RecipeBase:
        """Load what :meth:`state_dict` saved, plain values included.

        With ``strict``, a key this recipe has not registered raises a KeyError that
        names it (nothing is loaded); otherwise such keys are skipped.
        """
        unknown = [k for k in state_dict if k not in self._modules and k not in self._savable]
        if unknown and strict:
            known = sorted([*self._modules, *self._savable])
            raise KeyError(
                f"state dict has keys this recipe did not register: {unknown}; "
                f"registered: {known} (pass strict=False to skip them)"
            )
        for key, value in state_dict.items():
            if key in self._modules:
                unwrap_module(self.__dict__[key]).load_state_dict(value)
            elif key in self._savable:
                current = self.__dict__[key]
                if hasattr(current, "load_state_dict"):
                    current.load_state_dict(value)
                else:
                    self.__dict__[key] = value
        return self

    def to(self, device: torch.device | str) -> RecipeBase:
        """Move registered modules, tensors, optimizer states and nested recipes."""
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        for name in [*self._savable, *self._unsaved]:
            value = self.__dict__[name]
            if isinstance(value, torch.optim.Optimizer):
                _move_optimizer_state(value, self.device)
            elif isinstance(value, torch.nn.Module):
                continue
            elif callable(getattr(value, "to", None)) and not isinstance(value, type):
                self.__dict__[name] = value.to(self.device)
        return self

    def cuda(self) -> RecipeBase:
        return self.to("cuda")

    def cpu(self) -> RecipeBase:
        return self.to("cpu")

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}(device={self.device})", "Modules:"]
        lines += [f"  {n}: {type(self.__dict__[n]).__name__}" for n in self._modules]
        lines.append("Savables:")
        lines += [f"  {n}: {type(self.__dict__[n]).__name__}" for n in self._savable]
        return "\n".join(lines)


def _move_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for per_param in opt.state.values():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor) and key != "step":
                per_param[key] = value.to(device)


class Recipe(RecipeBase):
    """``Recipe(call_fun, loader)``: for each batch, ``call_fun(device_batch) -> dict``.

    ``recipe.callbacks`` holds the ordered lane and the shared ``state``;
    ``recipe.bus`` the async lane. ``run(epochs)`` for scripts, ``await arun(epochs)``
    inside an async app.

    ``call_fun`` may also take registered objects by name, as keyword parameters
    (``def test_pass(batch, model): ...``): the recipe passes them, and a concurrent
    :class:`~evloop.callbacks.CallRecipe` passes a snapshot of the modules instead.
    """

    def __init__(self, call_fun: Callable[..., dict[str, Any] | None], loader: Iterable[Any]):
        super().__init__()
        self.call_fun = call_fun
        self.loader = loader
        self.bus = Bus()
        self.callbacks = CallbacksRunner(self.bus)
        self.progress = Progress()
        self.grad_enabled: bool | None = None
        """None: the caller's grad mode; False: the run is under ``torch.no_grad()``."""
        self.bindings: dict[str, Any] = {}
        """Objects passed by name to ``call_fun`` during the current run."""
        self._overrides: dict[str, Any] = {}
        self._stop_requested = False
        self._running = False
        self._epoch_rng: dict[str, Any] | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._nested = False
        self._train_thread: int | None = None
        self._completed_state: dict[str, Any] | None = None
        self.publish_on_all_ranks = False
        """In a distributed run, whether ranks other than 0 publish events too."""
        self._ddp_options: dict[str, Any] | None = None
        self._ddp_guard: Callable[[], None] | None = None
        self._ddp_calls = 0
        self._savable["callbacks"] = None  # saved like a registered object
        self.callbacks.state["_loader"] = loader
        self.callbacks.state["_recipe"] = self

    @property
    def state(self) -> dict[str, Any]:
        return self.callbacks.state

    def parameters_by_name(self) -> tuple[str, ...]:
        """Registered names that ``call_fun`` takes as parameters."""
        try:
            parameters = list(inspect.signature(self.call_fun).parameters.values())[1:]
        except (TypeError, ValueError):  # builtins without a signature
            return ()
        registered = {**self._modules, **self._savable, **self._unsaved}
        return tuple(p.name for p in parameters if p.name in registered)

    # -- saving ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Registered objects, callbacks' states and progress (see :class:`RecipeBase`).

        Asked from another thread while this recipe runs (a checkpoint of the training
        loop while its evaluation runs concurrently), it returns the state as of the
        end of the last run, never a half-updated one.
        """
        if self._running and threading.get_ident() != self._train_thread:
            return (
                copy.deepcopy(self._completed_state)
                if self._completed_state
                else self._state_dict_now()
            )
        return self._state_dict_now()

    def _state_dict_now(self) -> dict[str, Any]:
        state = super().state_dict()
        state["progress"] = asdict(self.progress)
        if not self._nested:  # RNG states are the process's: the outermost recipe keeps them
            state["progress"].update(rng=rng_state(), epoch_rng=self._epoch_rng)
        return state

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> Recipe:
        """Load a saved state; the next run continues where it was saved.

        Global RNG states are restored at the start of that run (so that a loader
        shuffling mid-epoch is rebuilt in the same order first).
        """
        state_dict = dict(state_dict)
        progress = state_dict.pop("progress", None)
        super().load_state_dict(state_dict, strict)
        if progress is not None:
            progress = dict(progress)
            own_rng = _this_ranks_rng(progress.pop("rng_by_rank", None))
            rank0_rng = progress.pop("rng", None)
            self._resume_rng = rank0_rng if own_rng is None else own_rng
            self._epoch_rng = progress.pop("epoch_rng", None)
            self.progress = Progress(**progress)
        return self

    # -- watching -------------------------------------------------------------------
    def serve(
        self, host: str = "127.0.0.1", port: int = 0, token: str | None = None, **options: Any
    ) -> Any:
        """Serve this recipe's events over a websocket, with the live dashboard at
        ``server.url``; returns the started :class:`evloop.remote.Server`.

        Loopback by default; any other host requires a token (generated and printed
        when not given). Per-step events are sampled ``every`` iterations (default 10,
        like a logger's ``log_every``; 1 sends every step). In a distributed run only
        rank 0 serves: other ranks get None.
        """
        from .remote import serve_bus

        if not self._publishes_here():
            return None  # rank 0 serves the run
        return serve_bus(self.bus, host, port, token, **options)

    # -- distributed ----------------------------------------------------------------
    def distributed(
        self,
        *,
        ddp: bool = True,
        backend: str | None = None,
        timeout: datetime.timedelta = DEFAULT_TIMEOUT,
        publish_on_all_ranks: bool = False,
        **ddp_options: Any,
    ) -> Recipe:
        """Make this a data-parallel recipe when launched by ``torchrun`` (a no-op in a
        single process); returns the recipe.

        Joins the process group (:func:`evloop.distributed.init_from_env`), and at the
        start of each run wraps the registered modules that have trainable parameters
        in ``DistributedDataParallel(**ddp_options)``, after moving them to the
        recipe's device. The forward function must call the wrapper, so take the model
        by name (``def forward_pass(batch, model)``); a forward function that calls the
        bare module is detected at the first step. Give the loader a
        ``DistributedSampler``: the recipe sets its epoch. Events reach subscribers on
        rank 0 only unless ``publish_on_all_ranks``.
        """
        here = init_from_env(backend, timeout)
        self._ddp_options = dict(ddp_options) if ddp else None
        self.publish_on_all_ranks = publish_on_all_ranks
        sampler = getattr(self.loader, "sampler", None)
        if here.distributed and not isinstance(
            sampler, torch.utils.data.distributed.DistributedSampler
        ):
            warnings.warn(
                "the recipe's loader has no DistributedSampler: every rank trains on "
                "the whole data set",
                stacklevel=2,
            )
        return self

    def _wrap_for_ddp(self) -> None:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = []
        for name in self._modules:
            module = self.__dict__[name]
            if isinstance(module, DistributedDataParallel):
                wrapped.append(module)
                continue
            if not any(p.requires_grad for p in module.parameters()):
                continue
            device_ids = [self.device] if self.device.type == "cuda" else None
            ddp = DistributedDataParallel(module, device_ids=device_ids, **self._ddp_options)
            ddp.register_forward_pre_hook(self._count_ddp_call)
            self.__dict__[name] = ddp
            wrapped.append(ddp)
        if wrapped:
            self._ddp_guard = _bypass_guard(self, wrapped, self._ddp_calls)

    def _publishes_here(self) -> bool:
        """Whether this process publishes events: always, except on ranks other than 0
        of a distributed run unless ``publish_on_all_ranks``."""
        here = world()
        return not here.distributed or here.is_main or self.publish_on_all_ranks

    def _count_ddp_call(self, *_: Any) -> None:
        self._ddp_calls += 1

    # -- running --------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the run to end at the next batch boundary (thread- and task-safe)."""
        self._stop_requested = True

    def _epochs_to_run(self, epochs: int | None, total_epochs: int | None) -> int:
        if (epochs is None) == (total_epochs is None):
            if epochs is None:
                return 1
            raise TypeError("pass either epochs (more epochs) or total_epochs, not both")
        if epochs is not None:
            if epochs < 0:
                raise ValueError(f"epochs must be >= 0, got {epochs}")
            return epochs
        assert total_epochs is not None
        return max(0, total_epochs - self.progress.completed_epochs)

    def run(self, epochs: int | None = None, *, total_epochs: int | None = None) -> dict[str, Any]:
        """Train, then return the live ``state`` dict.

        ``run(n)`` trains ``n`` more epochs (an epoch interrupted by a checkpoint and
        resumed counts as one); ``run(total_epochs=n)`` trains until ``n`` epochs are
        complete in total, so a resumed script never trains longer than asked.

        Starts an event loop for the run's subscribers; inside an async app use
        :meth:`arun`. In the main thread of a script, Ctrl-C finishes the current
        batch, ends the run cleanly (final checkpoint, lossless subscribers drained)
        and raises KeyboardInterrupt; a second Ctrl-C aborts at once.
        """
        count = self._epochs_to_run(epochs, total_epochs)
        with _interrupts_stop(self) as interrupted:
            try:
                state = anyio.run(self.arun, count)
            except Exception as error:
                if isinstance(error, RuntimeError) and "already running" in str(error).lower():
                    raise RuntimeError(
                        "Recipe.run() was called from inside a running event loop; "
                        "use `await recipe.arun(epochs)` there"
                    ) from error
                _report_to_torchrun(error)
                raise
        if interrupted():
            raise KeyboardInterrupt(
                f"training interrupted at epoch {self.progress.epoch}, "
                f"iteration {self.progress.iters}; the run ended cleanly"
            )
        return state

    async def arun(
        self, epochs: int | None = None, *, total_epochs: int | None = None
    ) -> dict[str, Any]:
        """Train without blocking the event loop; same arguments as :meth:`run`.

        Cancelling the calling task stops training at the next batch boundary; the run
        still ends cleanly (``RunFinished(stopped=True)``, subscribers drained) before
        the cancellation propagates.
        """
        count = self._epochs_to_run(epochs, total_epochs)
        if self._running:
            raise RuntimeError("this recipe is already running")
        self._running = True
        self._stop_requested = False
        try:
            await self._drive(count)
        finally:
            self._running = False
        return self.callbacks.state

    async def _drive(self, epochs: int) -> None:
        bus = self.bus
        bus.bind()
        consumers = [s for s in bus.subscriptions if s.handler is not None and not s.failed]
        for subscription in consumers:
            subscription.closing = False
        outcome: dict[str, BaseException] = {}
        finished = anyio.Event()
        grad_enabled = torch.is_grad_enabled() if self.grad_enabled is None else self.grad_enabled

        async def train() -> None:
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(self._train, epochs, grad_enabled)
                except BaseException as error:  # re-raised below, after the drain
                    outcome["error"] = error
                finally:
                    finished.set()

        async with anyio.create_task_group() as tg:
            for subscription in consumers:
                tg.start_soon(_consume_shielded, bus, subscription)
            tg.start_soon(train)
            try:
                await finished.wait()
            except anyio.get_cancelled_exc_class():
                self.stop()
                with anyio.CancelScope(shield=True):
                    await finished.wait()
                raise
            finally:
                bus.flush(force=True)
                await bus.drain(consumers)
        with anyio.CancelScope(shield=True):
            await bus.deliver_leftovers(consumers)
            await _finish_subscribers(consumers)
        if "error" in outcome:
            raise outcome["error"]

    # -- the training thread --------------------------------------------------------
    def _train(self, epochs: int, grad_enabled: bool) -> None:
        self._train_thread = threading.get_ident()
        torch.set_grad_enabled(grad_enabled)  # grad mode is per thread
        if not self._overrides:  # never touch live modules from an evaluation thread
            self.to(self.device)
            if self._ddp_options is not None and world().distributed:
                self._wrap_for_ddp()
        self.bus.muted = not self._publishes_here()
        self.bindings = {
            name: self._overrides.get(name, self.__dict__[name])
            for name in self.parameters_by_name()
        }
        bus, progress = self.bus, self.progress
        bus.publish(
            RunStarted(
                epochs=epochs,
                epoch=progress.epoch,
                iters=progress.iters,
                batches_per_epoch=_length(self.loader),
            )
        )
        try:
            self.callbacks("on_run_start")
            completed = True
            for _ in range(epochs):
                completed = self._epoch()
                if not completed or self._stop_requested:
                    break
            stopped = not completed or self._stop_requested
            self.callbacks("on_run_end")
            if self._nested:
                self._completed_state = copy.deepcopy(self._state_dict_now())
            bus.publish(
                RunFinished(
                    epoch=progress.epoch,
                    iters=progress.iters,
                    stopped=stopped,
                    metrics=detached(self.callbacks.state["metrics"]),
                )
            )
        except BaseException as error:
            bus.publish(
                RunFailed(
                    epoch=progress.epoch,
                    iters=progress.iters,
                    error=repr(error),
                    traceback="".join(traceback.format_exception(error)),
                )
            )
            raise
        finally:
            self.bindings = {}
            bus.flush(force=True)

    def _counters(self) -> dict[str, int]:
        """The x-axis of events: the state's counters (Counter, or copied in), else ours."""
        state, progress = self.callbacks.state, self.progress
        return {
            "epoch": state.get("epoch", progress.epoch),
            "iters": state.get("iters", progress.iters),
            "epoch_batch": state.get("epoch_batch", progress.epoch_batch),
        }

    def _batches(self) -> Iterator[Any]:
        """This epoch's batches: a fresh epoch, or the rest of one resumed mid-way."""
        loader, progress = self.loader, self.progress
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if callable(set_epoch):  # DistributedSampler: a new order each epoch
            set_epoch(progress.epoch)
        resume_rng, self._resume_rng = self._resume_rng, None
        if progress.epoch_batch == 0 or self._epoch_rng is None:
            self._epoch_rng = loader_rng_state(loader)
            if resume_rng is not None:
                set_rng_state(resume_rng)
            return iter(loader)
        return self._resumed_batches(resume_rng)

    def _resumed_batches(self, resume_rng: dict[str, Any] | None) -> Iterator[Any]:
        assert self._epoch_rng is not None
        now = resume_rng if resume_rng is not None else rng_state()
        set_loader_rng_state(self.loader, self._epoch_rng)
        batches = iterate_from(self.loader, self.progress.epoch_batch)
        first = next(batches, _END)  # the loader draws its order here
        set_rng_state(now)
        if first is not _END:
            yield first
            yield from batches

    def _epoch(self) -> bool:
        """One epoch (or the rest of one); False when it was stopped before its end."""
        runner, bus, progress = self.callbacks, self.bus, self.progress
        state = runner.state
        if progress.epoch_done:
            progress.epoch += 1
            progress.epoch_batch = 0
            progress.epoch_done = False
            runner("on_epoch_start")
            if bus.wants(EpochStarted):
                bus.publish(EpochStarted(**self._counters()))
            bus.flush(force=True)
        on_batch_start = runner.handlers("on_batch_start")
        on_batch_end = runner.handlers("on_batch_end")
        on_batch_done = runner.handlers("on_batch_done")
        output_keys = runner.output_keys
        device = self.device
        call_fun = self.call_fun
        bindings = self.bindings
        for batch in self._batches():
            state["batch"] = batch
            batch = send_to_device(batch, device, non_blocking=True)
            state["_batch_gpu"] = batch
            progress.iters += 1
            progress.epoch_batch += 1
            for handler in on_batch_start:
                handler(state)
            if bus.wants(BatchStarted, progress.iters):
                bus.publish(BatchStarted(**self._counters()))
            out = call_fun(batch, **bindings) if bindings else call_fun(batch)
            if out:
                if not isinstance(out, dict):
                    raise TypeError(
                        f"the forward function must return a dict (or None), "
                        f"got {type(out).__name__}"
                    )
                state.update(out)
                output_keys.update(out)
            for handler in on_batch_end:
                handler(state)
            for handler in on_batch_done:
                handler(state)
            if self._ddp_guard is not None:
                self._ddp_guard()
            if bus.wants(BatchEnded, progress.iters):
                bus.publish(BatchEnded(**self._counters(), metrics=detached(state["metrics"])))
            bus.flush()
            if self._stop_requested:
                return False
        progress.epoch_done = True
        runner("on_epoch_end")
        runner("on_epoch_done")
        if bus.wants(EpochEnded):
            bus.publish(EpochEnded(**self._counters(), metrics=detached(state["metrics"])))
        bus.flush(force=True)
        return True


_END = object()


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


@contextlib.contextmanager
def _interrupts_stop(recipe: Recipe) -> Iterator[Callable[[], bool]]:
    """In the main thread: first Ctrl-C stops the run cleanly, the second aborts."""
    hits: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield lambda: False
        return

    def on_sigint(signum: int, frame: Any) -> None:
        hits.append(signum)
        if len(hits) > 1:
            # The training thread may be inside a long step: do not wait for it.
            print("\nevloop: aborted by a second Ctrl-C", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)
        print(
            "\nevloop: interrupted; finishing the current batch and ending the run "
            "(Ctrl-C again to abort at once)",
            file=sys.stderr,
            flush=True,
        )
        recipe.stop()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _report_to_torchrun(error: BaseException) -> None:
    """Under torchrun, record the error so that its summary names this rank and shows
    this traceback as the root cause (the other ranks are then stopped)."""
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    handler = ErrorHandler()
    handler.initialize()
    handler.record_exception(error)


def _this_ranks_rng(by_rank: list[Any] | None) -> Any:
    """This rank's saved RNG state, or None (then rank 0's is used)."""
    if not by_rank:
        return None
    here = world()
    if len(by_rank) != here.size:
        warnings.warn(
            f"the checkpoint holds the RNG states of {len(by_rank)} ranks and this run has "
            f"{here.size}: every rank resumes with rank 0's",
            stacklevel=3,
        )
        return None
    return by_rank[here.rank]


def _bypass_guard(recipe: Recipe, wrapped: list[Any], calls_before: int) -> Callable[[], None]:
    """After a run's first step: fail when gradients were computed without a call
    through the DistributedDataParallel wrapper (they would not be synchronised)."""

    def check() -> None:
        recipe._ddp_guard = None
        has_grads = any(p.grad is not None for ddp in wrapped for p in ddp.parameters())
        if has_grads and recipe._ddp_calls == calls_before:
            name = getattr(recipe.call_fun, "__name__", "the forward function")
            raise RuntimeError(
                f"{name} computed gradients without calling the DistributedDataParallel "
                f"wrapper, so they are not synchronised across ranks: take the model by "
                f"name (`def {name}(batch, model)`) or call `recipe.model` instead of a "
                f"module captured before recipe.distributed()"
            )

    return check


async def _consume_shielded(bus: Bus, subscription: Subscription) -> None:
    with anyio.CancelScope(shield=True):
        await bus.consume(subscription)


async def _finish_subscribers(subscriptions: list[Subscription]) -> None:
    for subscription in subscriptions:
        owner = subscription.owner
        if owner is None or subscription.failed:
            continue
        try:
            await maybe_await(owner.finish())
        except Exception as error:  # a failing writer must not hide the run's outcome
            log.error("subscriber %s failed to finish: %r", subscription.name, error)
