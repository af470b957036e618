"""One run folder's event log as columns: every scalar series at full resolution, read
incrementally (a live run's log grows; only whole lines are taken), and its summary.

The comparison page asks for these columns bucketed (:mod:`evloop.remote.buckets`);
the full resolution stays here, so zooming in shows the points themselves.
"""

from __future__ import annotations

import logging
import os
import time
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from ..events import Event, decode_json
from ..kinds import Kind
from ..loggers.summary import SUMMARY_FILE, RunSummary

__all__ = ["RunLog", "SeriesTable", "EventLine", "Column", "EVENT_LOG", "run_folders"]

log = logging.getLogger("evloop")
EVENT_LOG = "events.jsonl"
READ_CHUNK = 8 * 1024 * 1024
STALE_S = 300.0  # a running run's log silent this long is listed "stale"


def run_folders(paths: Iterable[str | Path]) -> list[Path]:
    """The run folders among ``paths``: each that holds an event log, or the folders
    inside it that do (a runs folder)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / EVENT_LOG).is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.iterdir() if (p / EVENT_LOG).is_file())
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


_decode_line = msgspec.json.Decoder(EventLine).decode
# the events a summary follows; their lines are decoded again as full events
_SUMMARY_TYPES = frozenset(
    {"run_started", "epoch_ended", "run_finished", "run_failed", "eval_finished"}
)
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


class RunLog(SeriesTable):
    """``RunLog(folder)``: call :meth:`refresh` to take in what was appended since."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = folder.name
        self._start_over()

    def _start_over(self) -> None:
        self._clear()
        self.loaded = False
        self.skipped = 0
        """Lines that did not decode (torn writes)."""
        self._summary = RunSummary(str(self.folder))
        self._offset = 0

    @property
    def path(self) -> Path:
        return self.folder / EVENT_LOG

    def refresh(self) -> bool:
        """Read the lines appended since the last call; whether there were any."""
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return False
        if size == self._offset and self.loaded:
            return False  # nothing appended: a stat, not an open
        if size < self._offset:  # rewritten from scratch: start over
            self._start_over()
        grew = False
        with open(self.path, "rb") as file:
            file.seek(self._offset)
            tail = b""
            while chunk := file.read(READ_CHUNK):
                data = tail + chunk
                end = data.rfind(b"\n") + 1  # a line still being written waits
                self._take(data[:end])
                self._offset += end
                tail = data[end:]
                grew = grew or end > 0
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
                log.warning("%s: a line skipped: %s", self.path, error)
                continue
            self.take(line)

    def summary(self) -> dict[str, Any]:
        """Name, status, start, end, duration, hyper-parameters, last metrics and
        evaluation, and the series it has. Before the log is read: its
        ``summary.json`` (written as the run went), so a list of many runs opens fast."""
        if not self.loaded:
            recorded = _read_summary(self.folder / SUMMARY_FILE)
            if recorded is not None:
                return {**recorded, "name": self.name, "series": None}
        self.refresh()  # what was appended since (a stat when nothing was)
        fields = dict(self._summary.fields)
        fields["name"] = self.name
        fields.setdefault("status", "unknown")
        if fields["status"] == "running" and self.started and self.last_time:
            fields["duration"] = self.last_time - self.started  # so far
            if time.time() - self.last_time > STALE_S:  # killed, or paused for long
                fields["status"] = "stale"
                fields["error"] = (
                    f"no event for {time.time() - self.last_time:.0f} s and no end recorded:"
                    " its process may have been killed"
                )
        fields["series"] = sorted(self.columns)
        return fields


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        fields = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    return fields if isinstance(fields, dict) else None
