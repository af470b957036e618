"""One run folder's event log as columns: every scalar series at full resolution, read
incrementally (a live run's log grows; only whole lines are taken), and its summary.

The comparison page asks for these columns bucketed (:mod:`evloop.remote.buckets`);
the full resolution stays here, so zooming in shows the points themselves.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from ..codec import decode_json
from ..decoding import SafeDecoder, decode_any_json
from ..events import Event
from ..kinds import Kind
from ..loggers.summary import SUMMARY_EVENTS, SUMMARY_FILE, RunSummary
from .contained import inside

__all__ = [
    "RunLog",
    "LogTail",
    "SeriesTable",
    "EventLine",
    "Column",
    "EVENT_LOG",
    "run_folders",
    "silence",
]

log = logging.getLogger("evloop")
EVENT_LOG = "events.jsonl"
READ_CHUNK = 8 * 1024 * 1024
STALE_S = 300.0  # a running run's log silent this long is listed "stale"


def run_folders(paths: Iterable[str | Path]) -> list[Path]:
    """The run folders among ``paths``: each that holds an event log, or the folders
    inside it that do (a runs folder)."""
    found: list[Path] = []
    for path in map(Path, paths):
        try:
            if (path / EVENT_LOG).is_file():
                found.append(path)
            elif path.is_dir():
                found += sorted(p for p in path.iterdir() if (p / EVENT_LOG).is_file())
        except OSError as error:  # a folder it may not list: the others are still found
            log.warning("%s: cannot look for runs there: %s", path, error)
    return found


class EventLine(msgspec.Struct):
    """What a series needs of any event line (the rest of the line is skipped)."""

    type: str
    time: float = 0.0
    source: str = ""
    iters: int = -1
    step: int = -1
    prefix: str = ""
    batches_per_epoch: int | None = None
    metrics: dict[str, Any] | None = None
    kinds: dict[str, str] = {}

    @classmethod
    def of(cls, event: Event) -> EventLine:
        """What a series needs of a decoded event (one received over a websocket)."""
        fields = {f: getattr(event, f) for f in cls.__struct_fields__[1:] if hasattr(event, f)}
        return cls(type=str(type(event).__struct_config__.tag), **fields)


_decode_line = SafeDecoder(msgspec.json.Decoder(EventLine)).decode
# the events a summary follows; their lines are decoded again as full events
_SUMMARY_TYPES = frozenset(str(t.__struct_config__.tag) for t in SUMMARY_EVENTS)
_SERIES_SOURCE = {"batch_ended": "train", "epoch_ended": "train", "system_sampled": "system"}


class Column:
    """One series: its steps, times (seconds since the run started) and values."""

    __slots__ = ("steps", "times", "values", "views")

    def __init__(self) -> None:
        self.steps = array("q")
        self.times = array("d")
        self.values = array("d")
        self.views: dict[str, Any] = {}  # what a chart made of it, kept while it is unchanged

    def add(self, step: int, seconds: float, value: float) -> None:
        if self.steps and step <= self.steps[-1]:
            if step == self.steps[-1]:  # an epoch end repeating its last batch
                self.values[-1] = value
            return
        self.steps.append(step)
        self.times.append(seconds)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.steps)


class SeriesTable:
    """Scalar series by name (``train/loss``, ``test/acc``, ``system/cpu_percent``), as
    the live page names them, from event lines."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.columns: dict[str, Column] = {}
        self._by_source: dict[str, dict[str, Column]] = {}  # the same columns, by source
        self.batches_per_epoch: int | None = None
        self.started: float | None = None
        self.last_time: float | None = None

    def column(self, source: str, key: str) -> Column:
        columns = self._by_source.get(source)
        if columns is None:
            columns = self._by_source[source] = {}
        column = columns.get(key)
        if column is None:
            column = columns[key] = self.columns[f"{source}/{key}"] = Column()
        return column

    def take(self, line: EventLine) -> None:
        if line.type == "run_started" and not line.source:
            if self.started is None:
                self.started = line.time
            self.batches_per_epoch = line.batches_per_epoch or self.batches_per_epoch
        self.last_time = line.time
        source = _SERIES_SOURCE.get(line.type)
        if line.type == "eval_finished":
            source = line.prefix
        elif line.source:  # a nested run's own events: its results come as eval_finished
            return
        if source is None or not line.metrics:
            return
        step = line.step if line.type == "system_sampled" else line.iters
        seconds = line.time - (self.started if self.started is not None else line.time)
        kinds = line.kinds
        for key, value in line.metrics.items():
            if type(value) is not float and type(value) is not int:  # not bool, not media
                continue
            if kinds and kinds.get(key, Kind.SCALAR) != Kind.SCALAR:
                continue
            self.column(source, key).add(step, seconds, value)


LIVE_STATES = ("running", "paused", "stopping")


def ended_unrecorded(fields: dict[str, Any], last_time: float | None) -> str | None:
    """Why a run whose summary says it is live (``fields``) is shown "stale": its
    process, on this machine, is gone; or, running, it has been silent too long (a
    paused run is silent by design). None when nothing says it ended."""
    if fields.get("status") not in LIVE_STATES:
        return None
    pid, host = fields.get("pid"), fields.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
        return f"its process (pid {pid}) is gone and no end was recorded: it was killed"
    return silence(last_time) if fields.get("status") == "running" else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def silence(last_time: float | None, now: float | None = None) -> str | None:
    """Why a run with no end recorded, whose last event was at ``last_time``, is
    "stale" (silent for :data:`STALE_S`: killed, or paused for long); else None."""
    silent = (time.time() if now is None else now) - last_time if last_time else 0.0
    if silent <= STALE_S:
        return None
    return f"no event for {silent:.0f} s and no end recorded: its process may have been killed"


class LogTail:
    """The whole lines appended to a log since the last read: a line still being
    written waits for its end."""

    def __init__(self) -> None:
        self.offset = 0

    def blocks(self, path: Path) -> Iterator[bytes]:
        """Blocks of whole lines from :attr:`offset` on (raises OSError)."""
        with open(path, "rb") as file:
            file.seek(self.offset)
            tail = b""
            while chunk := file.read(READ_CHUNK):
                data = tail + chunk
                end = data.rfind(b"\n") + 1
                self.offset += end
                tail = data[end:]
                if end:
                    yield data[:end]


class RunLog(SeriesTable):
    """``RunLog(folder)``: call :meth:`refresh` to take in what was appended since. A
    log that cannot be read (a link leading outside the folder, no permission) makes
    the run :attr:`unreadable`, with why."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = folder.name
        self.unreadable: str | None = None
        self._start_over()

    def _start_over(self) -> None:
        self._clear()
        self.loaded = False
        self.skipped = 0
        """Lines that did not decode (torn writes, hostile lines)."""
        self._summary = RunSummary(str(self.folder))
        self._tail = LogTail()

    @property
    def path(self) -> Path:
        return self.folder / EVENT_LOG

    def refresh(self) -> bool:
        """Read the lines appended since the last call; whether there were any."""
        try:
            grew = self._read_appended()
        except FileNotFoundError:
            return False
        except Exception as error:  # whatever the folder holds, the other runs go on
            said = f"{EVENT_LOG} cannot be read: {error}"
            if said != self.unreadable:
                log.warning("%s: %s", self.folder, said)
            self.unreadable = said
            return False
        self.unreadable = None
        return grew

    def _read_appended(self) -> bool:
        path = inside(self.folder, EVENT_LOG)
        size = os.path.getsize(path)
        if size == self._tail.offset and self.loaded:
            return False  # nothing appended: a stat, not an open
        if size < self._tail.offset:  # rewritten from scratch: start over
            self._start_over()
        grew = False
        for block in self._tail.blocks(path):
            self._take(block)
            grew = True
        self.loaded = True
        return grew

    def _take(self, data: bytes) -> None:
        for text in data.splitlines():
            if not text.strip():
                continue
            try:
                line = _decode_line(text)
                if line.type in _SUMMARY_TYPES:
                    event = decode_json(text)
                    self._summary.follow(event, getattr(event, "metrics", None))
            except msgspec.DecodeError as error:  # a torn write: the rest is kept
                self.skipped += 1
                if self.skipped == 1:  # one line per run, not one per bad line
                    log.warning("%s: a line skipped (and any later one): %s", self.path, error)
                continue
            self.take(line)

    def summary(self) -> dict[str, Any]:
        """Name, status, start, end, duration, hyper-parameters, last metrics and
        evaluation, and the series it has. Before the log is read: its
        ``summary.json`` (written as the run went), so a list of many runs opens fast.
        Status "stale" for a run with no end recorded whose log is silent
        (:func:`silence`), "unreadable" for a log that cannot be read."""
        if not self.loaded:
            recorded = _read_summary(self.folder)
            if recorded is not None:
                return self._recorded(recorded)
        self.refresh()  # what was appended since (a stat when nothing was)
        fields = dict(self._summary.fields)
        fields["name"] = self.name
        fields.setdefault("status", "unknown")
        if self.unreadable is not None:
            fields.update(status="unreadable", error=self.unreadable)
        elif fields["status"] in LIVE_STATES and self.started and self.last_time:
            fields["duration"] = self.last_time - self.started  # so far
            stale = ended_unrecorded(fields, self.last_time)
            if stale is not None:
                fields.update(status="stale", error=stale)
        fields["series"] = sorted(self.columns)
        return fields

    def _recorded(self, recorded: dict[str, Any]) -> dict[str, Any]:
        fields = {**recorded, "name": self.name, "series": None}
        if fields.get("status") in LIVE_STATES:  # the log's last write: its last event
            try:
                stale = ended_unrecorded(fields, os.path.getmtime(inside(self.folder, EVENT_LOG)))
            except OSError:
                stale = None
            if stale is not None:
                fields.update(status="stale", error=stale)
        return fields


MAX_SUMMARY = 1024 * 1024  # bytes: a summary is a few KB


def _read_summary(folder: Path) -> dict[str, Any] | None:
    """The folder's ``summary.json``, when it lies inside the folder and decodes to
    an object."""
    try:
        path = inside(folder, SUMMARY_FILE)
        if os.path.getsize(path) > MAX_SUMMARY:
            log.warning("%s: %s is over %d bytes: not read", folder, SUMMARY_FILE, MAX_SUMMARY)
            return None
        fields = decode_any_json(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    return fields if isinstance(fields, dict) else None
