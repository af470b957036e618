"""Typed, immutable events.

Every event is a frozen :class:`msgspec.Struct`; together they form a tagged union
(the ``type`` field, :data:`ANY_EVENT`) so one decoder reads any of them
(:mod:`evloop.codec`: JSON for browsers, MessagePack for Python clients; its
functions are importable from here too).

In-process, metric values may be detached torch tensors still on the device: the
training thread never copies them to the host.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

__all__ = [
    "Event",
    "RunStarted",
    "RunFinished",
    "RunFailed",
    "RunStateChanged",
    "RUN_STATES",
    "EpochStarted",
    "EpochEnded",
    "BatchStarted",
    "BatchEnded",
    "SubscriberDropped",
    "SubscriberFailed",
    "EvalFinished",
    "EvalSkipped",
    "CheckpointFailed",
    "SyncDetected",
    "CommandApplied",
    "DivergenceRolledBack",
    "SettingsRolledBack",
    "SystemSampled",
    "Stalled",
    "RanksSampled",
    "StepTimes",
    "ProfileReport",
    "ANY_EVENT",
    "LIFECYCLE_EVENTS",
]


class Event(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    """Base of every event. ``time`` is the wall-clock time it was created at;
    ``source`` names the nested run that published it ("" for the run itself)."""

    time: float = msgspec.field(default_factory=time.time)
    source: str = ""


class _Progress(Event, frozen=True, kw_only=True):
    """Counters shared by the per-epoch and per-batch events (Torchélie's semantics)."""

    epoch: int
    iters: int
    epoch_batch: int


RUN_STATES = ("idle", "running", "paused", "stopping", "finished", "stopped", "failed")
"""Where a run stands: ``running`` from its start (``RunStarted``), ``paused`` and back
(``RunStateChanged``), ``stopping`` once a stop was asked for (its final checkpoint and
evaluation, the drain), then ``finished``, ``stopped`` (``RunFinished``) or ``failed``
(``RunFailed``)."""


class RunStarted(Event, frozen=True, tag="run_started", kw_only=True):
    """A run began: ``epochs`` it will train, from the counters it starts at."""

    epochs: int
    epoch: int
    iters: int
    batches_per_epoch: int | None = None
    """``len(loader)`` when the loader has one."""
    total_batches: int | None = None
    """How many batches this run will train if it is not stopped (when known)."""
    hparams: dict[str, Any] = {}
    """The run's hyper-parameters as configured, before any scheduler or warm-up step
    (a top-level run's; see :mod:`evloop.hparams`)."""
    settings: dict[str, Any] = {}
    """The values of the settings controllers may change, at the start."""
    domains: dict[str, dict[str, Any]] = {}
    """Each setting's type and domain (:meth:`evloop.control.Controls.domains`)."""
    pid: int = 0
    """The process that runs it, on ``host`` (a run list tells a killed run by it)."""
    host: str = ""


class RunStateChanged(Event, frozen=True, tag="run_state_changed", kw_only=True):
    """A top-level run was paused, resumed or asked to stop (:data:`RUN_STATES`), at
    the step boundary where it took effect; ``reason`` says what did it (a command and
    its client, Ctrl-C, EarlyStopping…)."""

    state: str
    previous: str
    reason: str = ""
    epoch: int = -1
    iters: int = -1


class RunFinished(Event, frozen=True, tag="run_finished", kw_only=True):
    """A run ended without an error, with the metrics it ended on."""

    epoch: int
    iters: int
    stopped: bool = False
    """True when the run ended early (``recipe.stop()``, cancellation)."""
    reason: str = ""
    """Why a stopped run stopped, when it was said: ``'pruned'`` (a search's trial)."""
    metrics: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    """Each metric's kind (:mod:`evloop.kinds`)."""


class RunFailed(Event, frozen=True, tag="run_failed", kw_only=True):
    """A run ended with an error (``error``, and its ``traceback`` as text)."""

    epoch: int
    iters: int
    error: str
    traceback: str


class EpochStarted(_Progress, frozen=True, tag="epoch_started", kw_only=True):
    """An epoch began (after the callbacks' ``on_epoch_start``)."""


class EpochEnded(_Progress, frozen=True, tag="epoch_ended", kw_only=True):
    """An epoch ended: ``state['metrics']`` after every ``on_epoch_end``."""

    metrics: dict[str, Any]
    kinds: dict[str, str] = {}


class BatchStarted(_Progress, frozen=True, tag="batch_started", kw_only=True):
    """A step began (after the callbacks' ``on_batch_start``)."""


class BatchEnded(_Progress, frozen=True, tag="batch_ended", kw_only=True):
    """A step ended: ``state['metrics']`` after every ``on_batch_end``."""

    metrics: dict[str, Any]
    kinds: dict[str, str] = {}


class SubscriberDropped(Event, frozen=True, tag="subscriber_dropped", kw_only=True):
    """A subscriber's queue overflowed: ``dropped`` events were discarded or coalesced."""

    subscriber: str
    dropped: int
    total: int


class SubscriberFailed(Event, frozen=True, tag="subscriber_failed", kw_only=True):
    """A subscriber raised; it was detached, training went on."""

    subscriber: str
    error: str
    traceback: str


class EvalFinished(Event, frozen=True, tag="eval_finished", kw_only=True):
    """An evaluation (``CallRecipe``) ended; its x-axis is the training iteration of the
    weights it evaluated."""

    prefix: str
    epoch: int
    iters: int
    metrics: dict[str, Any]
    duration: float
    mode: str
    kinds: dict[str, str] = {}


class CheckpointFailed(Event, frozen=True, tag="checkpoint_failed", kw_only=True):
    """A checkpoint could not be written (a full disk …): the previous files are kept,
    and the next checkpoint tries again."""

    path: str
    error: str


class SyncDetected(Event, frozen=True, tag="sync_detected", kw_only=True):
    """The training thread made the host wait for the device (``SyncCheck``):
    ``culprit`` names the callback hook or forward function, ``stack`` shows where."""

    culprit: str
    iters: int
    message: str
    stack: str


class CommandApplied(Event, frozen=True, tag="command_applied", kw_only=True):
    """A command was applied between two steps (or failed: ``ok`` false, ``error``
    why): ``changes`` maps each setting to ``[old, new]``; ``client`` sent it."""

    op: str
    id: str = ""
    client: str = ""
    changes: dict[str, list[Any]] = {}
    """Each setting changed, ``[old, new]``; ``state`` for pause, resume and stop."""
    ok: bool = True
    error: str | None = None
    iters: int = -1
    """The iteration after which it took effect."""


class DivergenceRolledBack(Event, frozen=True, tag="divergence_rolled_back", kw_only=True):
    """``DivergenceGuard`` found values that are not finite (or spikes): the weights
    went back to iteration ``restored_to`` and the learning rates were multiplied by
    ``lr_factor``; ``stopped``: it gave up and stopped the run (``reason`` says why)."""

    iters: int
    restored_to: int
    lr_factor: float
    stopped: bool = False
    reason: str = ""


class EvalSkipped(Event, frozen=True, tag="eval_skipped", kw_only=True):
    """An evaluation was due while the previous one was still running: it was skipped."""

    prefix: str
    iters: int
    skipped: int


class SettingsRolledBack(Event, frozen=True, tag="settings_rolled_back", kw_only=True):
    """The optimizer's step failed after a controller changed its settings (a value
    within its domain that the optimizer could not use): they went back to their
    values before the change, that step was skipped, and training went on.
    ``changes`` maps each setting to ``[refused, restored]``; ``error`` is the step's."""

    iters: int
    changes: dict[str, list[Any]]
    error: str


class SystemSampled(Event, frozen=True, tag="system_sampled", kw_only=True):
    """Resource use, sampled about once a second by a thread of its own
    (:class:`evloop.callbacks.SystemMetrics`); ``step`` is the training iteration it
    was taken at."""

    step: int
    metrics: dict[str, Any]
    kinds: dict[str, str] = {}


class Stalled(Event, frozen=True, tag="stalled", kw_only=True):
    """A rank reached no step boundary for ``seconds`` (``Watchdog``): ``where`` its
    training thread is (its innermost call), ``stack`` every thread's stack, the
    training thread's first; ``waiting_for``: the ranks that have not reached the
    collective this rank waits in (empty when it waits for none, or when unknown)."""

    rank: int
    iters: int
    seconds: float
    where: str
    stack: str
    waiting_for: list[int] = []


class RanksSampled(Event, frozen=True, tag="ranks_sampled", kw_only=True):
    """Each rank's mean time per step over the last sample (``Watchdog``, published by
    rank 0 about once a second): ``step_s`` as each rank's clock saw it, ``busy_s``
    the part its training thread spent running rather than waiting (None: no step in
    the sample, or not measured); ``slowest`` the rank the others wait for (the most
    busy time per step, else the longest step). ``step`` is rank 0's iteration."""

    step: int
    step_s: list[float | None]
    busy_s: list[float | None] = []
    slowest: int


class StepTimes(Event, frozen=True, tag="step_times", kw_only=True):
    """Where one sampled step's time went (``StepBreakdown``): ``parts`` in seconds, in
    step order: ``data`` (waiting for the loader, and the copy to the device),
    ``forward`` (the forward function: forward and backward), ``optimizer`` (the
    ``Optimizer`` callback), ``callbacks`` (the others, each in ``callbacks`` by name)
    and ``engine`` (events, commands). ``clock``: ``monotonic`` (the host's) or
    ``cuda`` (device events, read once complete: the result comes a few steps late).
    ``verdict`` says which part dominates, when one does."""

    iters: int
    step_s: float
    parts: dict[str, float]
    callbacks: dict[str, float] = {}
    verdict: str = ""
    clock: str = "monotonic"


class ProfileReport(Event, frozen=True, tag="profile_report", kw_only=True):
    """A profile asked for with the ``profile`` command ended (``ok``) or failed
    (``error``): iterations ``first`` to ``last`` on ``rank``; ``path`` the trace
    (Chrome/Perfetto JSON) relative to the run folder; ``top`` the operators by self
    time (``name``, ``self_s``, ``total_s``, ``calls``); ``breakdown`` the mean
    ``StepTimes`` parts over the profiled steps (when ``StepBreakdown`` is on)."""

    ok: bool
    first: int
    last: int
    rank: int = 0
    path: str = ""
    step_s: float | None = None
    top: list[dict[str, Any]] = []
    breakdown: dict[str, float] = {}
    error: str = ""
    id: str = ""
    client: str = ""


ANY_EVENT = (
    RunStarted
    | RunFinished
    | RunFailed
    | RunStateChanged
    | EpochStarted
    | EpochEnded
    | BatchStarted
    | BatchEnded
    | SubscriberDropped
    | SubscriberFailed
    | EvalFinished
    | EvalSkipped
    | CheckpointFailed
    | SyncDetected
    | CommandApplied
    | DivergenceRolledBack
    | SystemSampled
    | SettingsRolledBack
    | Stalled
    | RanksSampled
    | StepTimes
    | ProfileReport
)

# Events a coalescing subscriber must never discard.
LIFECYCLE_EVENTS: tuple[type[Event], ...] = (
    RunStarted,
    RunFinished,
    RunFailed,
    RunStateChanged,
    EpochStarted,
    EpochEnded,
    SubscriberFailed,
    EvalFinished,
    EvalSkipped,
    CheckpointFailed,
    SyncDetected,
    CommandApplied,
    DivergenceRolledBack,
    SettingsRolledBack,
    Stalled,
    ProfileReport,
)


def __getattr__(name: str) -> Any:
    """The codec's functions, where they were first published (``evloop.events``)."""
    if name.startswith("_"):  # a probe (``__path__``...): never worth importing the codec
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import codec

    if name in codec.__all__:
        return getattr(codec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
