"""Where a top-level run stands, as its users see it, changed in one place.

``running`` from the start, ``paused`` and back by commands, ``stopping`` once the
run was asked to stop and is ending (its final evaluation and checkpoint, the drain),
then ``finished``, ``stopped`` or ``failed``. Each change inside a run is published as
:class:`~evloop.events.RunStateChanged` at the step boundary where it took effect; the
start and the end are ``RunStarted``, ``RunFinished`` and ``RunFailed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import RUN_STATES, RunStateChanged

if TYPE_CHECKING:
    from .context import RunContext

__all__ = ["RunState", "IllegalTransition"]

# From each state, the states a run may go to while it runs.
_NEXT = {
    "running": ("paused", "stopping"),
    "paused": ("running", "stopping"),
    "stopping": (),
}
ENDED = ("finished", "stopped", "failed")


class IllegalTransition(ValueError):
    """A change the run's state does not allow (pausing a run that is stopping)."""


class RunState:
    """The state of a recipe's top-level run (:data:`~evloop.events.RUN_STATES`)."""

    def __init__(self) -> None:
        self.now = "idle"
        self.reason = ""
        """What caused the last change."""

    def begin(self) -> None:
        """A run starts (its ``RunStarted`` says so)."""
        self.now, self.reason = "running", ""

    def change(self, run: RunContext, state: str, reason: str) -> None:
        """Go to ``state`` now, for ``reason``, and publish it; the same state again is
        no change. An :class:`IllegalTransition` says why a change is refused."""
        if state == self.now:
            return
        self.check(state)
        previous, self.now, self.reason = self.now, state, reason
        progress = run.progress
        run.publish(
            RunStateChanged(
                state=state,
                previous=previous,
                reason=reason,
                epoch=progress.epoch,
                iters=progress.iters,
            )
        )

    def check(self, state: str) -> None:
        """An :class:`IllegalTransition` unless the run may go to ``state`` now."""
        if state != self.now and state not in _NEXT.get(self.now, ()):
            raise IllegalTransition(f"the run is {self.now}: it cannot become {state}")

    def end(self, state: str) -> None:
        """The run ended (its ``RunFinished`` or ``RunFailed`` says so)."""
        assert state in ENDED and state in RUN_STATES
        self.now = state
