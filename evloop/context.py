"""The typed context of a running recipe: its progress, its bus, stop, the world.

Callbacks get the run they belong to with :func:`current` (inside any ordered-lane
hook) instead of reaching into the shared ``state`` dict::

    def on_batch_end(self, state):
        run = evloop.context.current()
        if run.progress.iters % 100 == 0 and run.wants(MyEvent):
            run.publish(MyEvent(...))

Runs nest: a recipe run from inside another one's step (an evaluation, a GAN's
generator step) gets a context whose ``parent`` is the outer run's, and publishes on
the outer run's bus. The contexts of the runs in progress in a thread form a stack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .distributed import World, world

if TYPE_CHECKING:
    from .bus import Bus
    from .distributed.reduce import RankMeans
    from .events import Event
    from .recipe import Recipe

__all__ = ["Progress", "RunContext", "current", "current_or_none", "enter", "entered"]


@dataclass
class Progress:
    """Where a recipe stands, with Torchélie's counters.

    ``epoch`` is 0-based and ``iters`` is the 0-based index of the current (or last)
    batch; both are -1 before anything ran. ``epoch_batch`` is 1-based within the
    epoch and 0 before its first batch. These are the recipe's only counters: the
    ``Counter`` callback copies them into the shared state.
    """

    epoch: int = -1
    iters: int = -1
    epoch_batch: int = 0
    epoch_done: bool = True
    """False while the epoch ``epoch`` has batches left (a run stopped mid-epoch)."""
    configured: dict[str, Any] = field(default_factory=dict)
    """The optimizers' hyper-parameters as first configured, kept across resumes: a
    resumed run records those, not values a controller set since."""

    @property
    def completed_epochs(self) -> int:
        return self.epoch + 1 if self.epoch_done else self.epoch


class RunContext:
    """One run in progress: a top-level ``run()``/``arun()`` or a nested run."""

    def __init__(
        self,
        recipe: Recipe,
        parent: RunContext | None = None,
        adopt: Callable[[Bus], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.parent = parent
        self.nested = parent is not None
        """Whether it runs inside another run's step."""
        self.source = "" if parent is None else recipe.name or "nested"
        """The ``source`` of the events this run publishes ("" for a top-level run)."""
        self._adopt = adopt
        self.thread = threading.get_ident()
        """The thread the run started in (the training thread of a top-level run)."""
        self.root_thread: int = self.thread if parent is None else parent.root_thread
        self.means: RankMeans | None = None
        """In a distributed run: the step's metric values to average over ranks."""
        if world().distributed:
            from .distributed.reduce import RankMeans

            self.means = RankMeans(recipe.reduce_every)

    @property
    def world(self) -> World:
        """Where this process stands in a distributed run."""
        return world()

    @property
    def progress(self) -> Progress:
        return self.recipe.progress

    @property
    def bus(self) -> Bus:
        return self.recipe.bus

    @property
    def root(self) -> RunContext:
        """The top-level run this one is part of."""
        ctx = self
        while ctx.parent is not None:
            ctx = ctx.parent
        return ctx

    def wants(self, event_type: type[Event], iters: int | None = None) -> bool:
        """Whether a subscriber would receive this step's event of that type (build
        costly events only then)."""
        iters = self.progress.iters if iters is None else iters
        return self.bus.wants(event_type, iters, source=self.source)

    def publish(self, event: Event) -> None:
        """Publish on this run's bus, tagged with its ``source``."""
        if event.source != self.source:
            event = msgspec.structs.replace(event, source=self.source)
        self.bus.publish(event)

    def stop(self, reason: str = "", error: BaseException | None = None) -> None:
        """End this run at the next batch boundary (``root.stop()`` ends the
        top-level run); see :meth:`evloop.Recipe.stop` for ``reason`` and ``error``."""
        self.recipe.stop(reason, error)

    def adopt(self, bus: Bus) -> None:
        """Have the top-level run's event loop consume ``bus``'s subscribers (those of
        a recipe run nested in it)."""
        adopt = self.root._adopt
        if adopt is not None:
            adopt(bus)

    def includes(self, recipe: Any) -> bool:
        """Whether ``recipe`` is running in this context or one it is nested in."""
        ctx: RunContext | None = self
        while ctx is not None:
            if ctx.recipe is recipe:
                return True
            ctx = ctx.parent
        return False


class _Stack(threading.local):
    def __init__(self) -> None:
        self.top: RunContext | None = None


_stack = _Stack()


def current_or_none() -> RunContext | None:
    """The innermost run in progress in this thread, or None."""
    return _stack.top


def current() -> RunContext:
    """The innermost run in progress in this thread (call it from a callback)."""
    ctx = _stack.top
    if ctx is None:
        raise RuntimeError("no recipe is running in this thread")
    return ctx


def enter(ctx: RunContext | None) -> RunContext | None:
    """Make ``ctx`` this thread's innermost run; returns the one it replaces."""
    previous, _stack.top = _stack.top, ctx
    return previous


@contextmanager
def entered(ctx: RunContext | None) -> Iterator[RunContext | None]:
    """Make ``ctx`` this thread's innermost run for the block (an evaluation thread
    enters the run it evaluates for)."""
    previous, _stack.top = _stack.top, ctx
    try:
        yield ctx
    finally:
        _stack.top = previous
