"""The wire protocol between a serving recipe and its clients (version 1).

Transport: one websocket at ``/ws``. Query parameters: ``token`` (when the server has
one; or an ``Authorization: Bearer`` header), ``format`` (``json``, the default, or
``msgpack``), ``every`` and ``types`` (comma-separated event tags) as an initial
filter. Every server frame is an array of tagged messages in that format: first a
``hello``, then a ``history`` (what a late joiner missed), then the run's events as
they happen, each frame followed by a ``status``. Clients may send a ``subscribe``
message at any time to change their filter; anything else closes the connection
with code 1003 (unknown message) or 1007 (malformed), with a reason.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import msgspec

from ..decoding import SafeDecoder
from ..events import (
    ANY_EVENT,
    DivergenceRolledBack,
    EvalSkipped,
    ProfileReport,
    SettingsRolledBack,
    Stalled,
    StepTimes,
    SyncDetected,
)
from ..mailbox import Filter

__all__ = [
    "PROTOCOL_VERSION",
    "Hello",
    "History",
    "Status",
    "Health",
    "NOTICES",
    "Notice",
    "Subscribe",
    "Command",
    "CommandResult",
    "SERVER_MESSAGE",
    "CLIENT_MESSAGE",
    "FORMATS",
    "client_options",
    "encode_frame",
]

PROTOCOL_VERSION = 1
FORMATS = ("json", "msgpack")


class Status(msgspec.Struct, tag="status", kw_only=True):
    """Where the run stands: ``state`` is idle, running, paused, stopping, finished,
    stopped (``pruned`` or ``preempted`` when that is why) or failed
    (:data:`evloop.events.RUN_STATES`); no throughput or ETA while paused."""

    state: str = "idle"
    epoch: int = -1
    iters: int = -1
    epoch_batch: int = 0
    epochs: int | None = None
    batches_per_epoch: int | None = None
    throughput: float | None = None
    """Iterations per second, recent, from the events' own timestamps."""
    eta_s: float | None = None
    error: str | None = None
    last_epoch: int | None = None
    """The 0-based index of the run's last epoch (``epoch + 1`` of ``last_epoch + 1``)."""
    started: float | None = None
    """When the run started (the event's time, seconds since the epoch)."""
    duration_s: float | None = None
    """How long it ran, once it ended."""
    hparams: dict[str, Any] = {}
    """The run's hyper-parameters as configured (``RunStarted.hparams``)."""
    settings: dict[str, Any] = {}
    """The current value of each setting controllers may change (``lr``…): a live
    server reads them from the run, a replay from the events."""


class Health(msgspec.Struct, kw_only=True):
    dropped: int = 0
    failed: str | None = None


class Hello(msgspec.Struct, tag="hello", kw_only=True):
    protocol: int
    format: str
    name: str
    every: int | None
    control: bool = False
    """Whether this connection may send commands (it presented the control token)."""


Notice = SyncDetected | DivergenceRolledBack | EvalSkipped | SettingsRolledBack | Stalled
"""Events a person watching should see as they happen, not as a curve."""
NOTICES = (SyncDetected, DivergenceRolledBack, EvalSkipped, SettingsRolledBack, Stalled)


class History(msgspec.Struct, tag="history", kw_only=True):
    """For a late joiner: per series ``"<source>/<metric>"`` (source ``train`` or an
    evaluation prefix) a decimated list of ``[iteration, value]``; the latest HTML
    (reports, images) per window; the run's status and its subscribers' health; the
    last notices (host syncs found, divergence rollbacks, skipped evaluations,
    settings the optimizer refused, stalled ranks); the last step breakdowns
    (``StepTimes``) and profile reports."""

    series: dict[str, list[tuple[int, float]]]
    times: dict[str, list[float]] = {}
    """Per series, when each point was recorded: seconds since ``origin`` (the
    wall-time axis)."""
    origin: float | None = None
    """When the first run this server saw started (seconds since the epoch)."""
    latest: dict[str, str]
    status: Status
    health: dict[str, Health]
    notices: list[Notice] = []
    steps: list[StepTimes] = []
    profiles: list[ProfileReport] = []


class Subscribe(msgspec.Struct, tag="subscribe", kw_only=True, forbid_unknown_fields=True):
    """Client → server: receive only these event tags (None: all), per-step events every
    ``every`` iterations."""

    types: list[str] | None = None
    every: int | None = None


class Command(msgspec.Struct, tag="command", kw_only=True, forbid_unknown_fields=True):
    """Client → server, with the control token: ``op`` is pause, resume, stop,
    checkpoint, eval, set (``values``: ``{"lr": 1e-4}``) or profile (``values``:
    ``{"steps": 20, "ranks": "main"}``, see :mod:`evloop.profiling`). The server answers with a
    :class:`CommandResult` (queued or refused), then every client sees the
    ``command_applied`` event once the training thread applied it."""

    op: str
    values: dict[str, Any] = {}
    id: str = ""


class CommandResult(msgspec.Struct, tag="command_result", kw_only=True):
    """Server → the client that sent a command: ``ok`` (queued for the next step
    boundary) or ``error`` (refused; nothing changed); ``settings``: their values now."""

    id: str
    ok: bool
    error: str | None = None
    settings: dict[str, Any] = {}


SERVER_MESSAGE = ANY_EVENT | Hello | History | Status | CommandResult
CLIENT_MESSAGE = Subscribe | Command

_client_json = SafeDecoder(msgspec.json.Decoder(CLIENT_MESSAGE))
_client_msgpack = SafeDecoder(msgspec.msgpack.Decoder(CLIENT_MESSAGE))


def decode_client(data: str | bytes, fmt: str) -> Subscribe | Command:
    """A client's message; a :class:`msgspec.DecodeError` for whatever does not
    decode (:class:`msgspec.ValidationError` for a wrong shape or type)."""
    if fmt == "msgpack" and isinstance(data, bytes):
        return _client_msgpack.decode(data)
    return _client_json.decode(data)


def decoder(fmt: str) -> SafeDecoder[list[Any]]:
    """Decodes a server frame (an array of messages)."""
    if fmt == "msgpack":
        return SafeDecoder(msgspec.msgpack.Decoder(list[SERVER_MESSAGE]))
    return SafeDecoder(msgspec.json.Decoder(list[SERVER_MESSAGE]))


def client_options(path: str) -> tuple[str, Filter]:
    """The format and the initial filter a client asks for in its URL's query; a
    ValueError says what is wrong with them."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    fmt = query.get("format", ["json"])[0]
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    try:
        every = int(query["every"][0]) if "every" in query else None
    except ValueError:
        raise ValueError("every must be an integer") from None
    types = query["types"][0].split(",") if "types" in query else None
    return fmt, Filter.from_tags(types, every)


def encode_frame(fmt: str, messages: list[msgspec.Raw]) -> str | bytes:
    """One server frame: a JSON text or a MessagePack binary message."""
    if fmt == "msgpack":
        return msgspec.msgpack.encode(messages)
    return msgspec.json.encode(messages).decode()
