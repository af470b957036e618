"""Profiling on demand: the ``profile`` command runs ``torch.profiler`` over the next
``steps`` steps of a running recipe and reports what it found.

The command is checked when it is submitted (``steps`` a whole number from 1 to
:data:`MAX_STEPS`, ``ranks`` ``'main'`` or ``'all'``; refused while a profile runs or
when the run has no folder to write in), starts at the next step boundary, and stops
``steps`` boundaries later: the trace (Chrome/Perfetto JSON, written whole or not at
all) goes to ``profiles/`` of the run folder, and a
:class:`~evloop.events.ProfileReport` names it, the iterations it covers, its rank,
the top operators by self time and, with ``StepBreakdown``, the mean step breakdown.
Nothing of it runs while no profile is asked for.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import threading
import time
from typing import TYPE_CHECKING, Any

from .distributed import world
from .events import ProfileReport

if TYPE_CHECKING:
    from .context import RunContext
    from .control import Command

__all__ = ["Profiler", "MAX_STEPS", "TRACE_NAME", "TOP_OPERATORS"]

log = logging.getLogger("evloop")
MAX_STEPS = 1000
"""The longest profile (its trace grows with every step)."""
TOP_OPERATORS = 15
TRACE_NAME = re.compile(r"profile-[0-9]{1,12}-[0-9]{1,12}-rank[0-9]{1,6}\.json")
"""The names of the traces a server hands out (of ``profiles/`` in a run folder)."""
RANKS = ("main", "all")


class ProfileRefused(ValueError):
    """A ``profile`` command that cannot run; nothing was started."""


class Profiler:
    """``recipe.controls.profiler``: one profile at a time. ``folder`` is the run
    folder the traces go to (by default the folder of the recipe's ``JsonlWriter``,
    found at each run's start)."""

    def __init__(self) -> None:
        self.folder: str | None = None
        """Where ``profiles/`` goes; set it for a recipe without a ``JsonlWriter``."""
        self.active = False
        """Whether this rank profiles now (the loop steps it at each boundary)."""
        self._found: str | None = None  # the JsonlWriter's folder, at the last run start
        self._busy: str | None = None  # what runs (or is queued), for a refusal
        self._lock = threading.Lock()
        self._torch: Any = None
        self._command: Command | None = None
        self._first = self._left = 0
        self._started = 0.0
        self._breakdown: Any = None

    # -- any thread -------------------------------------------------------------------
    def where(self) -> str | None:
        """The run folder the next trace goes to, or None."""
        return self.folder if self.folder is not None else self._found

    def check(self, values: dict[str, Any]) -> None:
        """Refuse a bad or untimely ``profile`` command (:class:`ProfileRefused`, saying
        why); an accepted one counts as running from now on."""
        unknown = sorted(set(values) - {"steps", "ranks"})
        if unknown:
            raise ProfileRefused(f"profile takes steps and ranks, not {unknown[0]!r}")
        steps = values.get("steps", 20)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ProfileRefused(
                f"profile steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r}"[:160]
            )
        ranks = values.get("ranks", "main")
        if ranks not in RANKS:
            raise ProfileRefused(f"profile ranks must be 'main' or 'all', got {ranks!r}"[:120])
        if self.where() is None:
            raise ProfileRefused(
                "profile needs a run folder for its trace: add a JsonlWriter (its folder is "
                "the run's) or set recipe.controls.profiler.folder"
            )
        with self._lock:
            if self._busy is not None:
                raise ProfileRefused(
                    f"a profile is already running ({self._busy}): wait for its report"
                )
            self._busy = f"{steps} steps, asked for"

    # -- the training thread ----------------------------------------------------------
    def prepare(self, recipe: Any) -> None:
        """At a run's start: find the run folder (the ``JsonlWriter``'s)."""
        self._found = None
        for callback in recipe.callbacks.callbacks():
            path = getattr(callback, "path", None)
            if type(callback).__name__ == "JsonlWriter" and isinstance(path, str):
                self._found = os.path.dirname(os.path.abspath(path))
                return

    def start(self, run: RunContext, command: Command) -> dict[str, list[Any]]:
        """Start profiling at this boundary (on this rank when it is asked to); the
        changes the command's ``CommandApplied`` carries."""
        steps = int(command.values.get("steps", 20))
        ranks = command.values.get("ranks", "main")
        self._first, self._left = run.progress.iters + 1, steps
        with self._lock:
            self._busy = f"iterations {self._first} to {self._first + steps - 1}"
        if not (world().is_main or ranks == "all"):
            self.released()  # the other ranks' profile is rank 0's
            return {}
        import torch.profiler as profiler

        activities = [profiler.ProfilerActivity.CPU]
        if _on_cuda(run):
            activities.append(profiler.ProfilerActivity.CUDA)
        try:
            # a schedule that always records: the trace then marks each step
            self._torch = profiler.profile(
                activities=activities, schedule=lambda step: profiler.ProfilerAction.RECORD
            )
            self._torch.start()
        except Exception:
            self.released()
            raise
        self._command, self.active, self._started = command, True, time.perf_counter()
        self._breakdown = _breakdown_of(run)
        if self._breakdown is not None and self._breakdown.step_timer is not None:
            self._breakdown.step_timer.forced = True
        return {"profile": ["off", f"on for iterations {self._first}-{self._first + steps - 1}"]}

    def step(self, run: RunContext) -> None:
        """A step boundary while profiling: the last one ends the profile."""
        self._left -= 1
        if self._left <= 0:
            self.finish(run)  # ends the last step's marker (a step() would open another)
        else:
            self._torch.step()

    def finish(self, run: RunContext, error: str = "") -> None:
        """End the profile (its last step, the run's end, a failure) and report it."""
        last = run.progress.iters
        took = time.perf_counter() - self._started
        self.active = False
        timer = None if self._breakdown is None else self._breakdown.step_timer
        if timer is not None:
            timer.forced = False
        report = self._report(run, last, took, error)
        with self._lock:
            self._busy = None
        run.publish(report)
        run.bus.flush(force=True)

    def released(self) -> None:
        """A run ended with the command queued but never applied, or failed while it
        profiled: accept the next one."""
        if self.active:
            try:
                self._torch.stop()
            except Exception as failure:  # the run's own error is the one to tell
                log.warning("the profiler did not stop cleanly: %r", failure)
            self.active = False
        with self._lock:
            self._busy = None

    def _report(self, run: RunContext, last: int, took: float, error: str) -> ProfileReport:
        command = self._command
        assert command is not None
        rank, steps = world().rank, max(last - self._first + 1, 1)
        said: dict[str, Any] = {"first": self._first, "last": last, "rank": rank}
        said |= {"id": command.id, "client": command.client}
        try:
            self._torch.stop()
            folder = self.where()
            assert folder is not None
            name = f"profile-{self._first}-{last}-rank{rank}.json"
            _export(self._torch, os.path.join(folder, "profiles"), name)
            top = _top_operators(self._torch, _on_cuda(run))
        except Exception as failure:
            log.warning("the profile of iterations %s-%s failed: %r", self._first, last, failure)
            return ProfileReport(ok=False, error=f"{type(failure).__name__}: {failure}", **said)
        breakdown = _mean_parts(self._breakdown, self._first, last)
        return ProfileReport(
            ok=not error,
            error=error,
            path=f"profiles/{name}",
            step_s=took / steps,
            top=top,
            breakdown=breakdown,
            **said,
        )


def _on_cuda(run: RunContext) -> bool:
    import torch

    return torch.device(run.recipe.device).type == "cuda"


def _breakdown_of(run: RunContext) -> Any:
    for callback in run.recipe.callbacks.callbacks():
        if hasattr(callback, "step_timer") and hasattr(callback, "history"):
            return callback
    return None


def _export(prof: Any, folder: str, name: str) -> None:
    """The trace, under its name only once written whole."""
    os.makedirs(folder, exist_ok=True)
    partial = os.path.join(folder, f".{name}.partial")
    prof.export_chrome_trace(partial)
    os.replace(partial, os.path.join(folder, name))


def _top_operators(prof: Any, cuda: bool) -> list[dict[str, Any]]:
    """The operators with the most self time (the device's on CUDA), in seconds."""

    def own(average: Any) -> float:
        if cuda:
            device = getattr(average, "self_device_time_total", None)
            if device is None:
                device = getattr(average, "self_cuda_time_total", 0.0)
            return float(device or 0.0)
        return float(average.self_cpu_time_total)

    # the step markers' own time is everything outside operators (sleeps, the loader)
    operators = [a for a in prof.key_averages() if not str(a.key).startswith("ProfilerStep")]
    averages = sorted(operators, key=own, reverse=True)[:TOP_OPERATORS]
    return [
        {
            "name": str(average.key)[:200],
            "self_s": own(average) / 1e6,
            "total_s": float(average.cpu_time_total) / 1e6,
            "calls": int(average.count),
        }
        for average in averages
    ]


def _mean_parts(breakdown: Any, first: int, last: int) -> dict[str, float]:
    """The mean parts of the ``StepTimes`` measured in iterations ``first`` to ``last``."""
    if breakdown is None:
        return {}
    breakdown.drain()
    samples = [s for s in breakdown.history if first <= s.iters <= last]
    if not samples:
        return {}
    return {
        part: statistics.fmean(s.parts.get(part, 0.0) for s in samples) for part in samples[0].parts
    }
