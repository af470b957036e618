"""StepBreakdown: where a step's time goes, sampled, without syncing the device."""

from __future__ import annotations

import collections
from typing import Any

import msgspec
import torch

from .. import context
from .._step_timer import PARTS, Sample, StepTimer
from ..context import RunContext
from ..events import StepTimes
from .optimizer import Optimizer

__all__ = ["StepBreakdown", "verdict"]

ADVICE = {
    "data": "waits for the loader: raise num_workers (or pin_memory)?",
    "forward": "is the forward and backward: profile it to see which operators",
    "optimizer": "is the optimizer's step: a fused or foreach optimizer?",
    "engine": "is the engine's (events, commands): publish less often?",
}


class StepBreakdown:
    """Splits one step in ``every`` into its parts and publishes them as a
    :class:`~evloop.events.StepTimes` event: waiting for the loader (``data``), the
    forward function (``forward``: forward and backward), the ``Optimizer``
    callback's step (``optimizer``), every other callback by name (``callbacks``)
    and the engine's own work (``engine``). With a one-line ``verdict`` when a part
    takes more than ``dominant`` of the step (over the last ``window`` samples).

    On the CPU the parts come from the monotonic clock; on CUDA from device events,
    read once they completed (a few steps later, never waiting): no host sync. Steps
    not sampled run as without it. A ``profile`` command samples every profiled step.
    """

    def __init__(self, every: int = 10, dominant: float = 0.5, window: int = 5) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a whole number of steps >= 1, got {every!r}")
        if not 0 < dominant < 1:
            raise ValueError(f"dominant must be a fraction between 0 and 1, got {dominant!r}")
        self.every, self.dominant = every, dominant
        self.step_timer: StepTimer | None = None
        """The loop marks the sampled steps with it (made at each run's start)."""
        self.recent: collections.deque[StepTimes] = collections.deque(maxlen=max(window, 1))
        self.history: collections.deque[StepTimes] = collections.deque(maxlen=1000)
        """The last steps measured, oldest first."""
        self._run: RunContext | None = None

    def on_run_start(self, state: dict[str, Any]) -> None:
        self._run = context.current()
        cuda = torch.device(self._run.recipe.device).type == "cuda"
        self.step_timer = StepTimer(self.every, cuda)
        self.recent.clear()
        self.history.clear()

    def optimizers(self) -> tuple[type, ...]:
        """The callbacks whose hooks count as the optimizer's step."""
        return (Optimizer,)

    def on_batch_start(self, state: dict[str, Any]) -> None:
        if self.step_timer is not None and self.step_timer.done:
            self._publish()

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        if self.step_timer is not None and self.step_timer.done:
            self._publish()

    def on_run_end(self, state: dict[str, Any]) -> None:
        self.drain()  # the run is over: waiting costs no step

    def drain(self) -> None:
        """Publish every step marked so far (on CUDA, after waiting for the device)."""
        if self.step_timer is not None and self._run is not None:
            self.step_timer.flush()
            self._publish()

    def _publish(self) -> None:
        assert self.step_timer is not None and self._run is not None
        clock = "cuda" if self.step_timer.cuda else "monotonic"
        while self.step_timer.done:
            event = step_times(self.step_timer.done.popleft(), clock)
            self.recent.append(event)
            self.history.append(event)
            said = verdict(list(self.recent), self.dominant)
            if said:
                event = msgspec.structs.replace(event, verdict=said)
            self._run.publish(event)


def step_times(sample: Sample, clock: str) -> StepTimes:
    """A marked step as an event: its parts summed by kind, callbacks by name."""
    iters, durations = sample
    parts = dict.fromkeys(PARTS, 0.0)
    callbacks: dict[str, float] = {}
    for label, seconds in durations:
        if label.startswith("callbacks/"):
            name = label[len("callbacks/") :]
            callbacks[name] = callbacks.get(name, 0.0) + seconds
            label = "callbacks"
        parts[label] = parts.get(label, 0.0) + seconds
    step = sum(seconds for _, seconds in durations)
    return StepTimes(iters=iters, step_s=step, parts=parts, callbacks=callbacks, clock=clock)


def verdict(samples: list[StepTimes], dominant: float = 0.5) -> str:
    """One line when one part (or one callback) takes more than ``dominant`` of the
    steps of ``samples``; "" otherwise."""
    total = sum(s.step_s for s in samples)
    if total <= 0:
        return ""
    shares: dict[str, float] = {}
    named: dict[str, float] = {}
    for sample in samples:
        for part, seconds in sample.parts.items():
            shares[part] = shares.get(part, 0.0) + seconds
        for name, seconds in sample.callbacks.items():
            named[name] = named.get(name, 0.0) + seconds
    part, seconds = max(shares.items(), key=lambda item: item[1])
    if seconds / total <= dominant:
        return ""
    percent = round(100 * seconds / total)
    if part == "callbacks":
        name, own = max(named.items(), key=lambda item: item[1])
        if own / total > dominant / 2:
            own_percent = round(100 * own / total)
            return (
                f"{percent}% of the step is in callbacks, {own_percent}% in {name}: "
                "make it run less often?"
            )
        return f"{percent}% of the step is in callbacks: make them run less often?"
    return f"{percent}% of the step {ADVICE.get(part, 'is ' + part)}"
