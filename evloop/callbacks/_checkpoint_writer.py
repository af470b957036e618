"""Checkpoint's background writer: at most one snapshot waiting, every wait bounded."""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import queue
import re
import shutil
import string
import tempfile
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from ..checkpoint_io import remove_checkpoint
from ..distributed import all_gather_objects
from ..events import CheckpointFailed, Event
from ..host import HostCopy

__all__ = [
    "check_arguments",
    "score_of",
    "remove_other_best_files",
    "keep_newest",
    "unkeep",
    "Job",
    "Writer",
    "state_of",
    "add_every_ranks_rng",
    "check_writable",
    "best_path",
    "glob_of",
    "plain_error",
    "own_state",
]

log = logging.getLogger("evloop")
IDLE_S = 2.0  # seconds without a file to write before the writer thread ends


class Job(NamedTuple):
    """One file to write: ``state``, the saved state in host memory; ``extras``,
    ``{"score", "evaluation"}`` (the monitored value as it was; what an evaluation that
    ended after the state was taken puts into it, or None)."""

    path: str
    state: HostCopy
    extras: HostCopy
    stale: list[str]
    publish: Callable[[Event], None]
    scored: bool
    """Whether the file's weights were evaluated (it may become the best file)."""
    taken: float
    """When its state was taken (``time.time()``): the file's modification time, so that
    the newest file is the newest state even when an evaluation's file is written
    after later ones."""


class Writer:
    """A daemon thread writing :class:`Job` s with ``write``, one at a time; a failed
    job is handed to ``failed`` (the files it would have replaced stay)."""

    def __init__(
        self,
        timeout_s: float,
        write: Callable[[Job], None],
        failed: Callable[[Job, BaseException], None],
    ) -> None:
        self.timeout_s = timeout_s
        self._write = write
        self._failed = failed
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._written = threading.Condition()  # notified as each queued job ends
        self._pending = 0  # jobs queued or being written
        self._writing: str | None = None  # the file the writer is on
        self._alive = threading.Lock()  # starting and ending the thread

    def put(self, job: Job) -> None:
        """Queue ``job``; at most one waits for the writer, at most ``timeout_s``."""
        with self._written:
            self._pending += 1
        with self._alive:  # the thread cannot end between this check and the put
            self._ensure_thread()
            try:
                self._queue.put(job, timeout=self.timeout_s)
            except queue.Full:
                full = True
            else:
                full = False
        if full:
            with self._written:
                self._pending -= 1
            error = TimeoutError(f"checkpoint {job.path} was not saved: {self.stuck_on()}")
            self._failed(job, error)
            raise error

    def wait(self) -> None:
        """Block until every queued job is written (or failed), at most ``timeout_s``."""
        with self._written:
            if not self._written.wait_for(lambda: self._pending == 0, self.timeout_s):
                raise TimeoutError(f"checkpoints not all saved: {self.stuck_on()}")

    def unwritten(self) -> list[str]:
        """The files being written or waiting for the writer."""
        with self._queue.mutex:
            waiting = [job.path for job in self._queue.queue]
        writing = self._writing
        return ([writing] if writing else []) + waiting

    def stuck_on(self) -> str:
        writing = self._writing or "the previous checkpoint"
        return (
            f"{writing} was still being written after {self.timeout_s:.0f} s (a disk or "
            "network share that stopped answering?)"
        )

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._write_forever, name="evloop-checkpoint", daemon=True
            )
            self._thread.start()

    def _write_forever(self) -> None:
        """Until idle for :data:`IDLE_S`: the thread holds the checkpoint (and through it
        the model) only while there is something to write."""
        while True:
            try:
                job = self._queue.get(timeout=IDLE_S)
            except queue.Empty:
                with self._alive:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            self._writing = job.path
            try:
                self._write(job)
            except Exception as error:  # the previous checkpoints stay intact
                self._failed(job, error)
                message = plain_error(job.path, error)
                log.error("checkpoint %s was not written: %s", job.path, message)
                job.publish(CheckpointFailed(path=job.path, error=message))
            finally:
                # Dropped before a waiter is told: one that goes on to end the process
                # must not leave this daemon thread freeing tensors during shutdown.
                del job
                with self._written:
                    self._writing = None
                    self._pending -= 1
                    self._written.notify_all()


def state_of(objects: Any) -> Any:
    """What a checkpoint of ``objects`` holds: their state dicts, nested as given."""
    if hasattr(objects, "state_dict"):
        return objects.state_dict()
    if isinstance(objects, dict):
        return {k: state_of(v) for k, v in objects.items()}
    if isinstance(objects, list | tuple):
        return [state_of(v) for v in objects]
    return objects


def add_every_ranks_rng(saved: Any) -> None:
    """Every rank's RNG states into a recipe's saved progress (a collective: every rank
    saves the same structure), so that a resumed run draws what each rank would have."""
    progress = saved.get("progress") if isinstance(saved, dict) else None
    if isinstance(progress, dict) and "rng" in progress:
        progress["rng_by_rank"] = all_gather_objects(progress["rng"])


def check_writable(folder: str, owner: str) -> None:
    """An OSError naming ``owner`` unless files can be made in ``folder`` (made if
    missing); a folder with a ``{field}`` in its name is made by each save."""
    if "{" in folder:
        return
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        problem = f"{owner} cannot write into {folder}: {error.strerror}"
        raise OSError(error.errno, problem) from error


def best_path(path: str) -> str:
    """``ckpt_12.pth`` → ``ckpt_12_best.pth``."""
    stem, ext = os.path.splitext(path)
    return f"{stem}_best{ext}"


def glob_of(filename_base: str) -> str:
    """``ckpt_{epoch}.pth`` → ``ckpt_*.pth``: every name the base can format to."""
    return re.sub(r"\{[^{}]*\}", "*", filename_base)


def plain_error(path: str, error: Exception) -> str:
    """What went wrong, said plainly (a full disk says so, whatever the library)."""
    directory = os.path.dirname(os.path.abspath(path))
    full = isinstance(error, OSError) and error.errno == errno.ENOSPC
    with contextlib.suppress(OSError):
        full = full or shutil.disk_usage(directory).free < 1024 * 1024
    if full:
        return f"no space left on device: {directory} ({path} not written)"
    return f"{type(error).__name__}: {error}"


def own_state(state: Any, key: str) -> dict[str, Any] | None:
    """Where a checkpoint's own bookkeeping sits in the state it saves (the recipe's
    ``callbacks`` entry, at any depth)."""
    if isinstance(state, dict):
        own = state.get(key)
        if isinstance(own, dict) and "saved" in own and "best_file" in own:
            return own
        for value in state.values():
            found = own_state(value, key)
            if found is not None:
                return found
    return None


def score_of(
    monitor: Any,
    mode: str,
    key_best: Callable[[Any], Any] | None,
    path: str,
    state: Any,
    monitored: Any,
) -> float | None:
    """A checkpoint's score, higher is better (a monitored value in ``'min'`` mode is
    negated); None when it has none (no evaluation yet, ``key_best`` failed)."""
    if monitor is not None:
        if monitored is None:
            return None
        value = float(monitored)
        return -value if mode == "min" else value
    if key_best is None:
        return None
    try:
        return float(key_best(state))
    except Exception as error:  # e.g. no test metric before the first evaluation
        log.warning("checkpoint %s written; key_best failed, best unchanged: %r", path, error)
        return None


def remove_other_best_files(filename_base: str, best: str) -> None:
    """One best file, whatever earlier runs (resumed from older states) left."""
    for other in glob.glob(best_path(glob_of(filename_base))):
        if os.path.abspath(other) != os.path.abspath(best):
            with contextlib.suppress(OSError):
                remove_checkpoint(other)


def keep_newest(saved: list[str], path: str, max_saves: int) -> list[str]:
    """Add ``path`` last to ``saved``; returns the oldest ones beyond ``max_saves``,
    taken out of it."""
    if path in saved:
        saved.remove(path)
    saved.append(path)
    stale = saved[: max(0, len(saved) - max_saves)]
    del saved[: len(stale)]
    return stale


def unkeep(saved: list[str], path: str, stale: list[str]) -> None:
    """Undo :func:`keep_newest` after ``path``'s write failed: the stale files still on
    disk are kept."""
    if path in saved:
        saved.remove(path)
    saved[:0] = [old for old in stale if os.path.exists(old)]


def check_arguments(
    filename_base: str,
    max_saves: int,
    key_best: Any,
    every: int | None,
    monitor: str | None,
    mode: str,
    timeout_s: float,
) -> None:
    """A ValueError naming the first of ``Checkpoint``'s arguments that is wrong."""
    if max_saves < 1:
        raise ValueError(f"max_saves must be at least 1, got {max_saves}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if every is not None and not (isinstance(every, int) and every >= 1):
        raise ValueError(f"every must be at least 1 (or None), got {every!r}")
    try:
        list(string.Formatter().parse(filename_base))
    except ValueError as error:
        raise ValueError(f"bad checkpoint name {filename_base!r}: {error}") from None
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if monitor is not None and key_best is not None:
        raise ValueError("give monitor= or key_best=, not both")
