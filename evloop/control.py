"""Steering a running recipe: typed commands, applied by the training thread at the next
step boundary, acknowledged and recorded as events, saved with the recipe.

Commands: ``pause``, ``resume``, ``stop`` (a clean end: final checkpoint, subscribers
drained), ``checkpoint`` (every ``Checkpoint`` of the recipe, now), ``eval`` (every
``CallRecipe``, now) and ``set`` (settings, by name: ``lr``, ``lr/0`` for one
parameter group, ``weight_decay``, ``momentum``, ``beta1``, ``beta2``,
``accumulation``, ``<prefix>.run_every`` of an evaluation, and whatever the user
declares with :meth:`Controls.declare`) and ``profile`` (``steps``, ``ranks``: see
:mod:`evloop.profiling`). A command is checked when it is submitted
(unknown setting, wrong type, out of bounds: a specific error, nothing changes), then
applied between two steps, never in the middle of one. A paused run holds no lock:
checkpoints, evaluations and settings keep working while it waits.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from .domain import Domain
from .events import CommandApplied

if TYPE_CHECKING:
    from .context import RunContext
    from .profiling import Profiler

__all__ = ["Controls", "Setting", "Command", "OPS", "CommandError"]

OPS = ("pause", "resume", "stop", "checkpoint", "eval", "set", "profile")


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """``op`` (one of :data:`OPS`), the settings of a ``set``, the client's ``id`` for
    its reply, and who sent it."""

    op: str
    values: dict[str, Any] = {}
    id: str = ""
    client: str = "python"


class CommandError(ValueError):
    """A command that cannot be applied; nothing was changed."""


@dataclass
class Setting:
    """A value a running recipe lets its controllers change, within its domain: finite
    numbers from ``low`` to ``high`` (None: no bound; ``low_open``/``high_open``: the
    bound itself excluded; ``finite=False`` admits infinities), whole numbers for an
    ``int`` setting. ``hint`` is said with a refusal (how to widen the domain).
    ``restored``: its owner's saved state holds its value (an optimizer's rate), so a
    resumed run gets it from there; the others are set again at each run's start to
    the value a command gave them."""

    name: str
    get: Callable[[], Any]
    set: Callable[[Any], None]
    kind: type = float
    low: float | None = None
    high: float | None = None
    doc: str = ""
    low_open: bool = False
    high_open: bool = False
    finite: bool = True
    hint: str = ""
    restored: bool = False

    @property
    def domain(self) -> Domain:
        domain = Domain(self.low, self.high, self.low_open, self.high_open, self.finite)
        return domain.whole() if self.kind is int else domain

    def check(self, value: Any) -> Any:
        """``value`` converted to this setting's type, or a CommandError naming the
        setting, the value and the domain."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise CommandError(f"{self.name} must be true or false, got {_shown(value)}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandError(f"{self.name} must be a number, got {_shown(value)}")
        domain = self.domain
        whole = self.kind is int
        number = value if whole else _as_float(value)
        if number not in domain or (whole and value != int(value)):
            what = "a whole number" if whole else "a finite number" if self.finite else "a number"
            hint = f" ({self.hint})" if self.hint else ""
            raise CommandError(f"{self.name} must be {what} in {domain}{hint}, got {_shown(value)}")
        return self.kind(number)


def _as_float(value: int | float) -> float:
    """A float, an int too large for one as an infinity (which a finite domain refuses)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _shown(value: Any) -> str:
    """A value as a refusal quotes it: short, whatever a client sent."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python prints
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


class Controls:
    """``recipe.controls``: the settings of a recipe and the commands waiting for the
    next step boundary. :meth:`submit` may be called from any thread."""

    def __init__(self) -> None:
        self._declared: dict[str, Setting] = {}
        self._settings: dict[str, Setting] = {}
        self._queue: collections.deque[Command] = collections.deque()
        self._lock = threading.Lock()
        self._resumed = threading.Event()
        self.paused = False
        self.applied: dict[str, Any] = {}
        """Settings changed by commands, saved with the recipe and replayed on resume."""
        self.forked: dict[str, Any] = {}
        """Settings a fork of the run changes (:mod:`evloop.fork`), loaded from its
        checkpoint: checked and set at the next run's start (:meth:`apply_forked`),
        then part of :attr:`applied`."""
        self._offered_by: tuple[int, ...] | None = None
        from .profiling import Profiler  # torch: not for a process that only sends commands

        self.profiler: Profiler = Profiler()
        """Runs the ``profile`` command."""
        self.pauses = 0
        """How many times the run waited paused (a step with a pause is no sample)."""

    def declare(
        self,
        name: str,
        get: Callable[[], Any],
        set: Callable[[Any], None],
        kind: type = float,
        low: float | None = None,
        high: float | None = None,
        doc: str = "",
        *,
        low_open: bool = False,
        high_open: bool = False,
        finite: bool = True,
    ) -> None:
        """Let controllers change a value of yours (``kind`` float, int or bool) within
        its domain: finite numbers from ``low`` to ``high``, each bound excluded when
        ``low_open``/``high_open`` (see :class:`Setting`)."""
        self._declared[name] = Setting(
            name, get, set, kind, low, high, doc, low_open, high_open, finite
        )
        self._settings[name] = self._declared[name]
        self._offered_by = None

    def refresh(
        self, callbacks: Iterable[Any], *, same_callbacks_same_settings: bool = False
    ) -> None:
        """The settings of this run: the callbacks' (``controls()``) and the declared.
        ``same_callbacks_same_settings``: keep the settings when the callbacks are those
        of the last refresh (a nested run starts once per outer step)."""
        callbacks = tuple(callbacks)
        offered_by = (*map(id, callbacks), len(self._declared))
        if same_callbacks_same_settings and offered_by == self._offered_by and not self.applied:
            return
        self._offered_by = offered_by
        settings = {}
        for callback in callbacks:
            offered = getattr(callback, "controls", None)
            if callable(offered):
                settings.update({s.name: s for s in offered()})
        settings.update(self._declared)
        with self._lock:
            self._settings = settings
        for name, value in self.applied.items():  # changes no saved state holds, again
            if name in settings and not settings[name].restored:
                settings[name].set(value)

    def apply_forked(self, run: RunContext) -> None:
        """At a top-level run's start, in its training thread: a fork's settings,
        checked and set as a ``set`` command is (a schedule scaled by as much),
        published as one from client ``fork``; a refusal fails the run's start."""
        if not self.forked:
            return
        unknown = [name for name in self.forked if name not in self._settings]
        if unknown:
            known = ", ".join(sorted(self._settings)) or "none"
            raise CommandError(
                f"the fork's setting {unknown[0]!r} is not a setting of this run; settings: {known}"
            )
        try:
            changes = self._set(self.forked)
        except CommandError as error:
            raise CommandError(f"the fork's settings: {error}") from None
        self.forked = {}
        values = {name: new for name, (_, new) in changes.items()}
        run.publish(_applied(run, Command(op="set", values=values, client="fork"), changes))

    def describe(self) -> dict[str, Any]:
        """Each setting's current value (for a dashboard or ``evloop ctl``); safe to call
        from any thread."""
        with self._lock:
            settings = list(self._settings.values())
        return {setting.name: setting.get() for setting in settings}

    def domains(self) -> dict[str, dict[str, Any]]:
        """Each setting's type and domain, as plain values (a run folder records them:
        a fork of it checks its settings as ``set`` does, :mod:`evloop.fork`)."""
        with self._lock:
            settings = list(self._settings.values())
        return {
            s.name: {
                "kind": s.kind.__name__,
                "low": s.low,
                "high": s.high,
                "low_open": s.low_open,
                "high_open": s.high_open,
                "finite": s.finite,
                "hint": s.hint,
            }
            for s in settings
        }

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def submit(self, command: Command) -> None:
        """Check ``command`` and queue it for the next step boundary; a CommandError
        says why it was refused (nothing changes)."""
        if command.op not in OPS:
            raise CommandError(f"unknown command {command.op!r}; commands: {', '.join(OPS)}")
        if command.op == "set":
            if not command.values:
                raise CommandError("set needs at least one name=value")
            with self._lock:
                unknown = [name for name in command.values if name not in self._settings]
                if unknown:
                    known = ", ".join(sorted(self._settings)) or "none (is the recipe running?)"
                    raise CommandError(f"no setting {unknown[0]!r}; settings: {known}")
                for name, value in command.values.items():
                    self._settings[name].check(value)
        if command.op == "profile":
            from .profiling import ProfileRefused

            try:
                self.profiler.check(command.values)
            except ProfileRefused as refused:
                raise CommandError(str(refused)) from None
        self._queue.append(command)
        if command.op in ("resume", "stop"):
            self._resumed.set()  # a paused training thread wakes to apply it

    # -- the training thread ------------------------------------------------------------
    def apply(self, run: RunContext, state: dict[str, Any]) -> None:
        """Apply what is queued; while paused, wait here (commands still apply)."""
        self.apply_agreed(run, state, self.take(), lambda arrived: arrived)

    def take(self) -> list[Command]:
        """Every queued command, in order (rank 0 hands them to the other ranks)."""
        taken = []
        while self._queue:
            taken.append(self._queue.popleft())
        return taken

    def requeue(self, commands: list[Command]) -> None:
        """Put back commands a run ended before applying (they apply in the next)."""
        self._queue.extendleft(reversed(commands))

    def apply_agreed(
        self,
        run: RunContext,
        state: dict[str, Any],
        commands: list[Command],
        exchange: Callable[[list[Command]], list[Command]],
    ) -> bool:
        """Apply ``commands`` (in a distributed run, the same on every rank); while
        paused, get the next ones through ``exchange`` (rank 0's, handed to every rank;
        in one process, those that arrived). Returns whether one of them stopped the
        run."""
        stop = False
        while True:
            for command in commands:
                self._apply_one(run, state, command)
                stop = stop or command.op == "stop"
            if not self.paused or stop:
                self.paused = False
                return stop
            self.pauses += 1
            self._resumed.wait(0.2)
            self._resumed.clear()
            arrived = self.take()
            if run.recipe.stop_requested:  # Ctrl-C (on rank 0) while paused
                arrived.append(Command(op="stop", client="local"))
            commands = exchange(arrived)

    def _apply_one(self, run: RunContext, state: dict[str, Any], command: Command) -> None:
        changes: dict[str, list[Any]] = {}
        then: Callable[[], None] | None = None  # the state change, told after the command
        try:
            if command.op in ("pause", "resume", "stop"):
                changes, then = self._change_state(run, command)
            elif command.op == "checkpoint":
                _call_each(run, "save", state, "no Checkpoint callback in this recipe")
            elif command.op == "eval":
                _call_each(run, "evaluate_now", state, "no CallRecipe in this recipe")
            elif command.op == "profile":
                changes = self.profiler.start(run, command)
            else:
                changes = self._set(command.values)
        except Exception as error:  # reported to whoever sent it; training goes on
            run.publish(_applied(run, command, changes, error=str(error)))
        else:
            run.publish(_applied(run, command, changes))
            if then is not None:
                then()
        run.bus.flush(force=True)  # the run may pause next: deliver it now

    def _change_state(
        self, run: RunContext, command: Command
    ) -> tuple[dict[str, list[Any]], Callable[[], None] | None]:
        """pause, resume or stop: the run's state before and after, and the change to
        publish once the command's own event is out (a refused one raises)."""
        run_state = run.recipe.run_state
        before = run_state.now
        reason = f"{command.op} from {command.client}"
        if command.op == "stop":
            self.paused = False
            run.recipe.stop(reason)  # the run becomes "stopping" as it ends
            return {"state": [before, "stopping"]}, None
        target = "paused" if command.op == "pause" else "running"
        if not run.nested:
            run_state.check(target)
        self.paused = command.op == "pause"
        if before == target:
            return {}, None
        return {"state": [before, target]}, lambda: run_state.change(run, target, reason)

    def _set(self, values: dict[str, Any]) -> dict[str, list[Any]]:
        """All of ``values`` or none: each is checked before any is set (the settings
        may have changed since the command was queued), and a setter that raises puts
        back those set before it."""
        with self._lock:
            settings = self._settings
        missing = [name for name in values if name not in settings]
        if missing:
            raise CommandError(f"no setting {missing[0]!r} in this run; nothing was changed")
        checked = {name: settings[name].check(value) for name, value in values.items()}
        changes: dict[str, list[Any]] = {}
        for name, value in checked.items():
            try:
                old = settings[name].get()
                settings[name].set(value)
            except Exception as error:
                for done, (before, _) in reversed(changes.items()):
                    settings[done].set(before)
                raise CommandError(f"{name}: {error}; nothing was changed") from error
            changes[name] = [old, value]
        self.applied.update(checked)
        return changes

    # -- saving -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        saved: dict[str, Any] = {"applied": dict(self.applied)}
        if self.forked:  # saved before the fork's run started
            saved["forked"] = dict(self.forked)
        return saved

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.applied = dict(state.get("applied", {}))
        self.forked = dict(state.get("forked", {}))


def _applied(
    run: RunContext, command: Command, changes: dict[str, list[Any]], error: str | None = None
) -> CommandApplied:
    return CommandApplied(
        op=command.op,
        id=command.id,
        client=command.client,
        changes=changes,
        ok=error is None,
        error=error,
        iters=run.progress.iters,
    )


def _call_each(run: RunContext, method: str, state: dict[str, Any], missing: str) -> None:
    targets = [
        getattr(cb, method)
        for cb in run.recipe.callbacks.callbacks()
        if callable(getattr(cb, method, None))
    ]
    if not targets:
        raise CommandError(missing)
    for target in targets:
        target(state)
