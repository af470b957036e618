"""What the ranks' watchdogs tell each other while training threads may be stuck:
written to the job's key-value store — the TCPStore that ``torchrun``'s agent (or
rank 0, under ``parallel_run``) serves at ``MASTER_ADDR:MASTER_PORT`` — never through
a collective, which a stuck rank would never enter.

Each rank posts a :class:`Beat` about once a second: its iteration, its time per step,
and how many collectives it has issued on each process group. A rank that waits in
a collective is ahead, in that count, of the ranks that have not reached it: those
are the ranks it waits for. Stall reports are numbered with the store's atomic
counter, so that rank 0 reads each one once.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import msgspec
import torch.distributed as dist

from ..events import Stalled
from . import world

__all__ = ["Beat", "Peers", "collectives_issued"]

log = logging.getLogger("evloop")
STORE_TIMEOUT = datetime.timedelta(seconds=10)
MAX_REPORT_CHARS = 64 * 1024  # a stall report's stacks, at most


class Beat(msgspec.Struct, frozen=True):
    """A rank's latest sample."""

    rank: int
    iters: int
    step_s: float | None = None
    busy_s: float | None = None
    issued: dict[str, int] = {}
    """Collectives issued so far, per process group."""


def collectives_issued(groups: dict[str, Any]) -> dict[str, int]:
    """How many collectives this rank has issued on each of ``groups`` (c10d counts them
    per group; a group without the count is left out)."""
    issued = {}
    for name, group in groups.items():
        count = getattr(group, "_get_sequence_number_for_group", None)
        if count is None:
            continue
        try:
            issued[name] = int(count())
        except RuntimeError:  # a backend that does not count
            continue
    return issued


class Peers:
    """This rank's view of the others, for the run numbered ``run`` in this process
    (the same on every rank). Every method is safe to call from a watchdog thread; a
    store that stops answering turns it off (said once)."""

    def __init__(self, run: int) -> None:
        here = world()
        self.rank, self.size = here.rank, here.size
        job = os.environ.get("TORCHELASTIC_RUN_ID", "")
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self._prefix = f"evloop/watchdog/{job}/{restart}/{run}"
        self._store = _connect()
        self._read = 0  # stall reports read so far
        self._beats = msgspec.json.Decoder(Beat)
        self._reports = msgspec.json.Decoder(Stalled)

    @property
    def reachable(self) -> bool:
        return self._store is not None

    def post(self, beat: Beat) -> None:
        """This rank's latest sample, for the others."""
        self._call("set", self._key(f"beat/{self.rank}"), msgspec.json.encode(beat))

    def beats(self) -> list[Beat] | None:
        """Every rank's latest sample, in rank order (None until every rank posted)."""
        keys = [self._key(f"beat/{rank}") for rank in range(self.size)]
        if not self._call("check", keys):
            return None
        values = self._call("multi_get", keys)
        if values is None:
            return None
        try:
            return [self._beats.decode(value) for value in values]
        except msgspec.DecodeError as error:
            log.warning("watchdog: a rank posted an unreadable sample (%s)", error)
            return None

    def waiting_for(self, own: Beat) -> list[int]:
        """The ranks that have not issued the collectives this rank issued last."""
        beats = self.beats() or []
        behind = {
            beat.rank
            for beat in beats
            for group, count in own.issued.items()
            if beat.rank != self.rank and beat.issued.get(group, count) < count
        }
        return sorted(behind)

    def report(self, stall: Stalled) -> None:
        """Tell rank 0 of this rank's stall."""
        if len(stall.stack) > MAX_REPORT_CHARS:
            stall = msgspec.structs.replace(stall, stack=stall.stack[-MAX_REPORT_CHARS:])
        number = self._call("add", self._key("stalls"), 1)
        if number is not None:
            self._call("set", self._key(f"stall/{number}"), msgspec.json.encode(stall))

    def new_reports(self) -> list[Stalled]:
        """The stall reports posted since the last call (on rank 0)."""
        count = self._call("add", self._key("stalls"), 0)
        found = []
        while count is not None and self._read < count:
            key = self._key(f"stall/{self._read + 1}")
            if not self._call("check", [key]):
                break  # numbered, not written yet: read next time
            self._read += 1
            try:
                found.append(self._reports.decode(self._call("get", key)))
            except (msgspec.DecodeError, TypeError) as error:
                log.warning("watchdog: an unreadable stall report (%s)", error)
        return found

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}"

    def _call(self, method: str, *args: Any) -> Any:
        store = self._store
        if store is None:
            return None
        try:
            return getattr(store, method)(*args)
        except Exception as error:  # the store's host went away (the job is ending)
            log.warning("watchdog: the job's store stopped answering (%s): ranks unseen", error)
            self._store = None
            return None


def _connect() -> Any:
    """A client of the job's store, or None (then each rank watches itself alone)."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port or not port.isdigit():
        return None
    try:
        return dist.TCPStore(
            host, int(port), is_master=False, timeout=STORE_TIMEOUT, wait_for_workers=False
        )
    except Exception as error:  # another rendezvous than a TCP store
        log.warning("watchdog: cannot reach the job's store at %s:%s (%s)", host, port, error)
        return None
