"""Preemption: the signal a scheduler sends before it takes the machine back ends a run
like one Ctrl-C, on every rank at the same step boundary, then exits with a code that
says "run me again".

SLURM and Kubernetes send SIGTERM on preemption (and SIGKILL once their grace period
is over); ``torchrun`` forwards the SIGTERM it gets to its workers; SLURM can send
SIGUSR1 some time before a job's time limit (``--signal``). While a script's
``recipe.run()`` trains, the signals of ``recipe.preemption`` stop the run at the
next step boundary: the final checkpoint is written, lossless subscribers drained,
the run recorded as ``preempted`` (``summary.json``'s status), and ``run()`` raises
:class:`Preempted`, a ``SystemExit`` whose code (:data:`EXIT_CODE`, 143 — what a
shell reports for a process ended by SIGTERM) asks for the job to be requeued.
Should the end take longer than ``grace_s``, the process exits with that code anyway
and says what was not saved. A second signal changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .stacks import innermost

if TYPE_CHECKING:
    from .recipe import Recipe

__all__ = [
    "Preemption",
    "Preempted",
    "PREEMPTED_REASON",
    "EXIT_CODE",
    "handling_preemption",
    "preempted_line",
]

PREEMPTED_REASON = "preempted"
EXIT_CODE = 143
"""The exit code of a preempted run: 128 + SIGTERM, what a shell reports for a process
ended by SIGTERM, which requeueing policies already treat as "try again"."""


@dataclass(frozen=True)
class Preemption:
    """Which signals preempt a run, how long its clean end may take after one, and the
    exit code then: ``recipe.preemption = Preemption(signals=('SIGTERM', 'SIGUSR1'),
    grace_s=100)``."""

    signals: tuple[str, ...] = ("SIGTERM",)
    grace_s: float = 25.0
    """Below the scheduler's own (Kubernetes: 30 s by default; torchrun's agent waits
    30 s for its workers before it kills them)."""
    exit_code: int = EXIT_CODE

    def __post_init__(self) -> None:
        if isinstance(self.signals, str):
            raise TypeError(f"signals must be a tuple of names, got {self.signals!r}")
        for name in self.signals:
            if name in ("SIGINT", "SIGKILL", "SIGSTOP") or not isinstance(
                getattr(signal, str(name), None), signal.Signals
            ):
                raise ValueError(
                    f"{name!r} cannot preempt a run: give signal names such as 'SIGTERM' "
                    "or 'SIGUSR1' (Ctrl-C's SIGINT already stops a run)"
                )
        if not self.grace_s > 0:
            raise ValueError(f"grace_s must be positive, got {self.grace_s}")
        if not 1 <= self.exit_code <= 255:
            raise ValueError(f"exit_code must be between 1 and 255, got {self.exit_code}")


class Preempted(SystemExit):
    """Raised by ``run()`` once a preempted run ended cleanly: left uncaught, the
    process exits with ``code`` (:data:`EXIT_CODE` by default)."""

    def __init__(self, code: int = EXIT_CODE, cause: str = "") -> None:
        super().__init__(code)
        self.cause = cause
        """What preempted the run (the signal's name, or what ``recipe.preempt`` was
        told)."""


@contextlib.contextmanager
def handling_preemption(recipe: Recipe) -> Iterator[None]:
    """In a script's main thread, while ``recipe`` runs: its preemption signals stop
    it (those another handler already took are left alone)."""
    config = recipe.preemption
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    timer: list[threading.Timer] = []

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if timer:
            _say(f"{name} again: the run is already ending")
            return
        _say(
            f"{name}: preempted; finishing the current batch, saving and ending the run "
            f"(at most {config.grace_s:g} s)"
        )
        grace = threading.Timer(config.grace_s, _out_of_time, (recipe, name, config))
        grace.daemon = True
        grace.start()
        timer.append(grace)
        recipe.preempt(name)

    replaced = {}
    for name in config.signals:
        number = getattr(signal, name)
        if signal.getsignal(number) in (signal.SIG_DFL, None):
            replaced[number] = signal.signal(number, on_signal)
    try:
        yield
    finally:
        for number, previous in replaced.items():
            signal.signal(number, previous)
        for grace in timer:
            grace.cancel()


def preempted_line(recipe: Recipe) -> str:
    """What a preempted run that ended cleanly says before ``run()`` raises."""
    progress = recipe.progress
    return (
        f"evloop: preempted at epoch {progress.epoch}, iteration {progress.iters}; the "
        f"run ended cleanly. Exiting with {recipe.preemption.exit_code}: run the same "
        "command again (with resume='auto') to continue"
    )


def _out_of_time(recipe: Recipe, name: str, config: Preemption) -> None:
    """The grace period is over and the run has not ended: exit now, saying what was
    not saved."""
    lost = unsaved(recipe)
    _say(
        f"the run did not end within {config.grace_s:g} s of {name}: exiting with "
        f"{config.exit_code}. Not saved: " + ("; ".join(lost) if lost else "nothing known")
    )
    sys.stdout.flush()
    os._exit(config.exit_code)


def unsaved(recipe: Recipe) -> list[str]:
    """What a run that ends now would leave unwritten: its final checkpoint (when the
    run had not come to its end), checkpoints still being written, and the events its
    lossless subscribers have not consumed."""
    lost = []
    if recipe.running and recipe.run_state.now in ("running", "paused", "stopping"):
        where = innermost(recipe.training_thread)
        lost.append(
            f"the run's end (its final checkpoint): the training thread is still in "
            f"iteration {recipe.progress.iters}" + (f", in {where}" if where else "")
        )
    for callback in recipe.callbacks.callbacks():
        unwritten = getattr(callback, "unwritten", None)
        if callable(unwritten):
            lost += [f"checkpoint {path} (being written)" for path in unwritten()]
    for subscription in recipe.bus.subscriptions:
        waiting = len(subscription)
        if waiting and subscription.policy == "block":
            lost.append(f"{waiting} events not yet consumed by {subscription.name}")
    return lost


def _say(line: str) -> None:
    print(f"\nevloop: {line}", file=sys.stderr, flush=True)
