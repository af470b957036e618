"""Recipe: the training loop, registered objects, devices, and ``run``/``arun``.

The batch loop runs in one worker thread, driven by one task on the event loop, so
the loop stays responsive while training; subscribers of :attr:`Recipe.bus` consume
the events it publishes on that loop.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import torch

from .bus import Bus, Subscription, maybe_await
from .events import (
    BatchEnded,
    BatchStarted,
    EpochEnded,
    EpochStarted,
    RunFailed,
    RunFinished,
    RunStarted,
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


class RecipeBase:
    """Registered objects: their saving, loading and device moves."""

    def __init__(self) -> None:
        self._modules: dict[str, None] = {}  # ordered sets of names
        self._savable: dict[str, None] = {}
        self.device = torch.device("cpu")

    def register(self, name: str, value: Any) -> None:
        """Make ``value`` part of the recipe: ``recipe.<name>``, saving and device moves.

        Modules (and objects with ``state_dict``) are saved through their state dict,
        plain values as they are. Registering a name again replaces the object.
        """
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"cannot register {name!r}: use an identifier not starting with _")
        if name not in self._modules and name not in self._savable and hasattr(self, name):
            raise ValueError(f"cannot register {name!r}: it would hide Recipe.{name}")
        self._modules.pop(name, None)
        self._savable.pop(name, None)
        target = self._modules if isinstance(value, torch.nn.Module) else self._savable
        target[name] = None
        self.__dict__[name] = value

    def modules(self) -> Iterable[torch.nn.Module]:
        for name in self._modules:
            yield self.__dict__[name]

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
        for name in self._modules:
            self.__dict__[name].to(self.device)
        for name in self._savable:
            value = self.__dict__[name]
            if isinstance(value, torch.optim.Optimizer):
                _move_optimizer_state(value, self.device)
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
    """

    def __init__(self, call_fun: Callable[[Any], dict[str, Any] | None], loader: Iterable[Any]):
        super().__init__()
        self.call_fun = call_fun
        self.loader = loader
        self.bus = Bus()
        self.callbacks = CallbacksRunner(self.bus)
        self.progress = Progress()
        self._stop_requested = False
        self._running = False
        self._savable["callbacks"] = None  # saved like a registered object
        self.callbacks.state["_loader"] = loader

    @property
    def state(self) -> dict[str, Any]:
        return self.callbacks.state

    # -- saving ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["progress"] = asdict(self.progress)
        return state

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> Recipe:
        state_dict = dict(state_dict)
        progress = state_dict.pop("progress", None)
        super().load_state_dict(state_dict, strict)
        if progress is not None:
            self.progress = Progress(**progress)
        return self

    # -- running --------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the run to end at the next batch boundary (thread- and task-safe)."""
        self._stop_requested = True

    def run(self, epochs: int = 1) -> dict[str, Any]:
        """Train for ``epochs`` epochs; returns the live ``state`` dict.

        Starts an event loop for the run's subscribers; inside an async app use
        :meth:`arun` instead.
        """
        try:
            return anyio.run(self.arun, epochs)
        except RuntimeError as error:
            if "already running" in str(error).lower():
                raise RuntimeError(
                    "Recipe.run() was called from inside a running event loop; "
                    "use `await recipe.arun(epochs)` there"
                ) from error
            raise

    async def arun(self, epochs: int = 1) -> dict[str, Any]:
        """Train for ``epochs`` epochs without blocking the event loop.

        Cancelling the calling task stops training at the next batch boundary; the run
        still ends cleanly (``RunFinished(stopped=True)``, subscribers drained) before
        the cancellation propagates.
        """
        if self._running:
            raise RuntimeError("this recipe is already running")
        self._running = True
        self._stop_requested = False
        try:
            await self._drive(epochs)
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
        grad_enabled = torch.is_grad_enabled()

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
                bus.flush()
                await bus.drain(consumers)
        with anyio.CancelScope(shield=True):
            await _finish_subscribers(consumers)
        if "error" in outcome:
            raise outcome["error"]

    # -- the training thread --------------------------------------------------------
    def _train(self, epochs: int, grad_enabled: bool) -> None:
        torch.set_grad_enabled(grad_enabled)  # grad mode is per thread
        self.to(self.device)
        bus, progress = self.bus, self.progress
        bus.publish(RunStarted(epochs=epochs, epoch=progress.epoch, iters=progress.iters))
        try:
            self.callbacks("on_run_start")
            completed = True
            for _ in range(epochs):
                completed = self._epoch()
                if not completed or self._stop_requested:
                    break
            self.callbacks("on_run_end")
            bus.publish(
                RunFinished(
                    epoch=progress.epoch,
                    iters=progress.iters,
                    stopped=not completed or self._stop_requested,
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
            bus.flush()

    def _counters(self) -> dict[str, int]:
        """The x-axis of events: the state's counters (Counter, or copied in), else ours."""
        state, progress = self.callbacks.state, self.progress
        return {
            "epoch": state.get("epoch", progress.epoch),
            "iters": state.get("iters", progress.iters),
            "epoch_batch": state.get("epoch_batch", progress.epoch_batch),
        }

    def _epoch(self) -> bool:
        """One epoch; False when it was stopped before its end."""
        runner, bus, progress = self.callbacks, self.bus, self.progress
        state = runner.state
        progress.epoch += 1
        progress.epoch_batch = 0
        runner("on_epoch_start")
        if bus.wants(EpochStarted):
            bus.publish(EpochStarted(**self._counters()))
        bus.flush()
        on_batch_start = runner.handlers("on_batch_start")
        on_batch_end = runner.handlers("on_batch_end")
        output_keys = runner.output_keys
        device = self.device
        call_fun = self.call_fun
        for batch in self.loader:
            state["batch"] = batch
            batch = send_to_device(batch, device, non_blocking=True)
            state["_batch_gpu"] = batch
            progress.iters += 1
            progress.epoch_batch += 1
            for handler in on_batch_start:
                handler(state)
            if bus.wants(BatchStarted, progress.iters):
                bus.publish(BatchStarted(**self._counters()))
            out = call_fun(batch)
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
            if bus.wants(BatchEnded, progress.iters):
                bus.publish(BatchEnded(**self._counters(), metrics=detached(state["metrics"])))
            bus.flush()
            if self._stop_requested:
                return False
        runner("on_epoch_end")
        if bus.wants(EpochEnded):
            bus.publish(EpochEnded(**self._counters(), metrics=detached(state["metrics"])))
        bus.flush()
        return True


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
