"""The ordered lane: synchronous callbacks run in the training thread, in a fixed order.

Order: prologue, then middle ("callbacks"), then epilogue; insertion order inside a
phase; the same order for start and end events, exactly as Torchélie's
``CallbacksRunner``. Callbacks are duck-typed: any object with a method named after
the event (``on_batch_end(state)`` …) receives it.

A :class:`~evloop.bus.Subscriber` added here goes to the async lane instead: it is
subscribed to the recipe's bus (and still receives ordered-lane events if it also
defines such methods).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch

from .bus import Bus, Subscriber
from .compat import is_torchelie_callbacks, load_torchelie_callbacks

__all__ = ["CallbacksRunner", "state_key"]

PHASES = ("prologue", "middle", "epilogue")
# Keys of the state that belong to one step and are never saved.
TRANSIENT_KEYS = frozenset({"batch"})


def state_key(callback: Any) -> str:
    """A stable id for a callback's saved state.

    ``callback.state_key`` when the callback defines one (the built-in callbacks derive
    it from what identifies them, e.g. ``EpochMetricAvg[loss]``), else its class name.
    """
    key = getattr(callback, "state_key", None)
    return key if isinstance(key, str) else type(callback).__qualname__


_SKIP = object()
_PLAIN_TYPES = (int, float, bool, str, bytes, type(None), torch.Tensor)


def _plain(value: Any) -> Any:
    """``value`` with what ``weights_only`` loading refuses left out (_SKIP if nothing)."""
    if isinstance(value, _PLAIN_TYPES):
        return value
    if isinstance(value, dict):
        kept = {k: _plain(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not _SKIP}
    if isinstance(value, list | tuple):
        items = [v for v in (_plain(v) for v in value) if v is not _SKIP]
        return items if isinstance(value, list) else tuple(items)
    return _SKIP


Handlers = tuple[Callable[[dict[str, Any]], Any], ...]


HOOK_EVENTS = (
    "run_start",
    "epoch_start",
    "batch_start",
    "batch_end",
    "batch_done",
    "epoch_end",
    "epoch_done",
    "run_end",
)


class Hooks(NamedTuple):
    """The handlers of each event of the ordered lane (``on_<event>``), in dispatch
    order."""

    built_from: tuple[int, ...]
    run_start: Handlers
    epoch_start: Handlers
    batch_start: Handlers
    batch_end: Handlers
    batch_done: Handlers
    epoch_end: Handlers
    epoch_done: Handlers
    run_end: Handlers


class _Phase(list[Any]):
    """One phase's callbacks: a list that counts its changes, so that a run notices
    callbacks added to ``cbs[...]`` directly at no cost when there are none."""

    def __init__(self, owner: CallbacksRunner) -> None:
        super().__init__()
        self._owner = owner

    def _changed(self) -> None:
        self._owner.version += 1


def _counting(name: str) -> Any:
    method = getattr(list, name)

    def changed(self: _Phase, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        self._changed()
        return result

    changed.__name__ = name
    return changed


for _name in (
    "append",
    "extend",
    "insert",
    "remove",
    "pop",
    "clear",
    "sort",
    "reverse",
    "__setitem__",
    "__delitem__",
    "__iadd__",
):
    setattr(_Phase, _name, _counting(_name))


class CallbacksRunner:
    """Holds the callbacks of a recipe and the ``state`` dict they share."""

    def __init__(self, bus: Bus | None = None) -> None:
        self.bus = bus if bus is not None else Bus()
        self.version = 0  # bumped by every change to the lists of ``cbs``
        self.cbs: list[list[Any]] = [_Phase(self), _Phase(self), _Phase(self)]
        self.state: dict[str, Any] = {"metrics": {}}
        self.output_keys: set[str] = set()
        self._dispatch: dict[str, tuple[Callable[[dict[str, Any]], Any], ...]] = {}
        self._dispatched: tuple[int, ...] = ()  # the callbacks _dispatch was built from
        self._hooks: Hooks | None = None
        self._refreshed = -1  # the version of cbs last refreshed
        self._subscribed: set[int] = set()

    # -- registration (Torchélie's names) -------------------------------------------
    def add_prologue(self, cb: Any) -> None:
        """Add ``cb`` to the first phase: its hooks run before every callback's."""
        self._add(0, cb)

    def add_callback(self, cb: Any) -> None:
        """Add ``cb`` after the callbacks added so far (hooks run in that order); a
        :class:`~evloop.Subscriber` goes to the async lane instead."""
        self._add(1, cb)

    def add_epilogue(self, cb: Any) -> None:
        """Add ``cb`` to the last phase: its hooks run after every callback's."""
        self._add(2, cb)

    def add_prologues(self, cbs: Iterable[Any]) -> None:
        """:meth:`add_prologue` each of ``cbs``, in order."""
        for cb in cbs:
            self.add_prologue(cb)

    def add_callbacks(self, cbs: Iterable[Any]) -> None:
        """:meth:`add_callback` each of ``cbs``, in order."""
        for cb in cbs:
            self.add_callback(cb)

    def add_epilogues(self, cbs: Iterable[Any]) -> None:
        """:meth:`add_epilogue` each of ``cbs``, in order."""
        for cb in cbs:
            self.add_epilogue(cb)

    def _add(self, phase: int, cb: Any) -> None:
        if isinstance(cb, list | tuple):
            # The tutorial writes ``add_callback([...])``: accept a list here too.
            for one in cb:
                self._add(phase, one)
            return
        if cb is None:
            raise TypeError("cannot add None as a callback")
        self.cbs[phase].append(cb)
        self.refresh()

    def callbacks(self) -> Iterator[Any]:
        """Every callback, in dispatch order."""
        for phase in self.cbs:
            yield from phase

    def refresh(self) -> None:
        """Take callbacks added to (or replaced in) ``cbs`` directly into account, as
        Torchélie does: called at each run's start."""
        if self.version == self._refreshed and all(type(p) is _Phase for p in self.cbs):
            return
        self._refreshed = self.version
        current = tuple(map(id, itertools.chain.from_iterable(self.cbs)))
        if current == self._dispatched:
            return
        self._dispatched = current
        self._dispatch.clear()
        for cb in self.callbacks():
            if isinstance(cb, Subscriber) and id(cb) not in self._subscribed:
                self._subscribed.add(id(cb))
                self.bus.subscribe(cb)

    # -- dispatch -------------------------------------------------------------------
    def hooks(self) -> Hooks:
        """The handlers of every ordered-lane event, for one run."""
        hooks = self._hooks
        if hooks is None or hooks.built_from != self._dispatched:
            hooks = self._hooks = Hooks(
                self._dispatched, *(self.handlers(f"on_{name}") for name in HOOK_EVENTS)
            )
        return hooks

    def handlers(self, name: str) -> tuple[Callable[[dict[str, Any]], Any], ...]:
        handlers = self._dispatch.get(name)
        if handlers is None:
            handlers = tuple(
                getattr(cb, name) for cb in self.callbacks() if callable(getattr(cb, name, None))
            )
            self._dispatch[name] = handlers
        return handlers

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> None:
        state = self.state
        for handler in self.handlers(name):
            handler(state, *args, **kwargs)

    def update_state(self, values: dict[str, Any]) -> None:
        self.state.update(values)

    # -- saving ---------------------------------------------------------------------
    def named_callbacks(self) -> dict[str, Any]:
        """Stateful callbacks by stable id; repeated ids get ``#2``, ``#3``… in order."""
        named: dict[str, Any] = {}
        for cb in self.callbacks():
            if not callable(getattr(cb, "state_dict", None)):
                continue
            base = key = state_key(cb)
            n = 1
            while key in named:
                n += 1
                key = f"{base}#{n}"
            named[key] = cb
        return named

    def savable_state(self) -> dict[str, Any]:
        """The shared state without per-step data (no batch, outputs or ``_``-keys) and
        without display-only objects (reports), so that checkpoints load with
        ``torch.load(weights_only=True)``."""
        skip = TRANSIENT_KEYS | self.output_keys
        kept = {
            k: _plain(v) for k, v in self.state.items() if not k.startswith("_") and k not in skip
        }
        return {k: v for k, v in kept.items() if v is not _SKIP}

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": self.savable_state(),
            "callbacks": {k: cb.state_dict() for k, cb in self.named_callbacks().items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore saved state; transient keys (``_loader``…) of the live state are kept."""
        self.state.update(state_dict.get("state", {}))
        saved = state_dict.get("callbacks", {})
        if is_torchelie_callbacks(saved):
            load_torchelie_callbacks(self.cbs, saved)
            return
        for key, cb in self.named_callbacks().items():
            if key in saved:
                cb.load_state_dict(saved[key])
