"""How a run is asked to end: ``stop(reason, error)`` from anywhere, ``preempt(cause)``
for a scheduler taking the machine back, and what a rank says of it at a step vote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .distributed.vote import PREEMPTED, STOP
from .preemption import PREEMPTED_REASON, Preempted, Preemption

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["Stopping"]


class Stopping:
    """The stop requests of a recipe's run (a part of :class:`evloop.Recipe`)."""

    bus: Bus

    def _init_stopping(self) -> None:
        self._stop_requested = False
        self.stop_reason = ""
        """Why the run was asked to stop (``stop(reason)``), "" when not."""
        self._stop_error: BaseException | None = None
        self.preemption = Preemption()
        """Which signals preempt a script's run, its grace period, its exit code (see
        :mod:`evloop.preemption`)."""

    def _reset_stop(self) -> None:
        """A new run starts: nothing asked yet."""
        self._stop_requested = False
        self.stop_reason, self._stop_error = "", None
        self.bus.stopping = False

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def stop(self, reason: str = "", error: BaseException | None = None) -> None:
        """Ask the run to end at the next batch boundary (thread- and task-safe).

        ``reason`` says who asked and why (``'stop from 127.0.0.1:50112'``,
        ``'EarlyStopping: …'``): shown with the run's ``stopping`` state, recorded with
        its end (``'pruned'``, ``'preempted'``: the run's status). ``error`` is raised by
        ``run()``/``arun()`` once the run has ended cleanly (``optuna.TrialPruned`` for
        a pruned trial). The first reason and error asked for are kept."""
        self.stop_reason = self.stop_reason or reason
        self._stop_error = self._stop_error or error
        self._stop_requested = True
        self.bus.stopping = True

    def preempt(self, cause: str = "") -> None:
        """End the run as preempted (what a preemption signal does): like
        :meth:`stop`, recorded as ``preempted``, and ``run()`` then raises
        :class:`~evloop.preemption.Preempted` (exit code ``preemption.exit_code``);
        ``cause`` says what preempted it (a cloud's spot-instance notice, say)."""
        self.stop(PREEMPTED_REASON, Preempted(self.preemption.exit_code, cause))

    @property
    def preempted(self) -> bool:
        """Whether the run under way was asked to end as preempted."""
        return isinstance(self._stop_error, Preempted)

    @property
    def stop_vote(self) -> int:
        """What this rank asks the others at a step vote: 0, a stop, a preemption."""
        if not self._stop_requested:
            return 0
        return PREEMPTED if self.preempted else STOP

    def _ended(self, state: dict[str, Any]) -> dict[str, Any]:
        """What a finished top-level run returns, or the error its stop asked for."""
        error, self._stop_error = self._stop_error, None
        if error is not None:
            raise error
        return state
