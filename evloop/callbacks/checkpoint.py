"""Checkpoint: consistent snapshots on the training thread, atomic writes beside it."""

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
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import context
from ..checkpoint_io import atomic_save, host_snapshot, remove_stale_partials
from ..distributed import all_gather_objects, world
from ..events import CheckpointFailed, Event
from ..host import HostCopy
from .watched import WatchedValue

__all__ = ["Checkpoint"]

log = logging.getLogger("evloop")


def _state_of(objects: Any) -> Any:
    if hasattr(objects, "state_dict"):
        return objects.state_dict()
    if isinstance(objects, dict):
        return {k: _state_of(v) for k, v in objects.items()}
    if isinstance(objects, list | tuple):
        return [_state_of(v) for v in objects]
    return objects


def _add_every_ranks_rng(saved: Any) -> None:
    """Every rank's RNG states into a recipe's saved progress (a collective: every rank
    saves the same structure), so that a resumed run draws what each rank would have."""
    progress = saved.get("progress") if isinstance(saved, dict) else None
    if isinstance(progress, dict) and "rng" in progress:
        progress["rng_by_rank"] = all_gather_objects(progress["rng"])


def best_path(path: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}_best{ext}"


class Checkpoint:
    """Saves ``objects`` (usually the recipe) to ``filename_base.format(**state)``.

    When: at each epoch end, every ``every`` iterations if given, and at the end of a
    run stopped early (``recipe.stop()``, Ctrl-C, EarlyStopping) — always after every
    other callback of that step. The training thread only copies the state to host
    memory; a background thread writes it atomically (temporary file, fsync, rename)
    and removes what falls out of the newest ``max_saves`` files. Its bookkeeping (the
    files kept, the best score) is part of the state it saves, so the rotation and
    the single best file survive a resume.

    The best file, ``<name>_best.<ext>`` (the previous one removed), is written when
    ``monitor`` — a dotted path in the state such as ``'test_metrics.loss'`` — is at
    least as good as the best so far by ``mode`` (``'min'`` or ``'max'``), or when
    ``key_best(saved_state)`` is at least the best so far. At most one snapshot waits
    for the writer: training waits rather than piling up copies, at most ``timeout_s``
    (as does the run's end for the last write): a write stuck longer (a disk or network
    share that stopped answering) raises ``TimeoutError`` naming its file. Load a file
    with :func:`evloop.checkpoint_io.load` (``weights_only=True``).
    """

    def __init__(
        self,
        filename_base: str,
        objects: Any,
        max_saves: int = 10,
        key_best: Callable[[Any], float] | None = None,
        every: int | None = None,
        monitor: str | None = None,
        mode: str = "max",
        checksum: bool = False,
        timeout_s: float = 600.0,
    ) -> None:
        if max_saves < 1:
            raise ValueError(f"max_saves must be at least 1, got {max_saves}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        try:
            list(string.Formatter().parse(filename_base))
        except ValueError as error:
            raise ValueError(f"bad checkpoint name {filename_base!r}: {error}") from None
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if monitor is not None and key_best is not None:
            raise ValueError("give monitor= or key_best=, not both")
        self.filename_base = filename_base
        self.objects = objects
        self.max_saves = max_saves
        self.key_best = key_best
        self.every = every
        self.monitor = monitor
        self._watched = None if monitor is None else WatchedValue(self.state_key, monitor)
        self.mode = mode
        self.checksum = checksum
        self.timeout_s = timeout_s
        self._lock = threading.Lock()  # the bookkeeping, shared with the writer
        self.saved: list[str] = []
        self.best: float | None = None
        self.best_file: str | None = None
        self.last_error: BaseException | None = None
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=1)
        self._writer: threading.Thread | None = None
        self._written = threading.Condition()  # notified as each queued job ends
        self._pending = 0  # jobs queued or being written
        self._writing: str | None = None  # the file the writer is on
        self._name_checked = False  # whether the state held what the name asks for

    @property
    def state_key(self) -> str:
        return f"Checkpoint[{self.filename_base}]"

    # -- when -------------------------------------------------------------------------
    def on_run_start(self, state: dict[str, Any]) -> None:
        self._name_checked = False
        if world().is_main:  # rank 0 writes; its write may still be going on
            self._check_folder()
            self._remove_unfinished()

    def _check_folder(self) -> None:
        """A folder that cannot be written fails the run now, before training, rather
        than each save failing (and being reported) while training goes on."""
        folder = os.path.dirname(os.path.abspath(self.filename_base))
        if "{" in folder:
            return  # one per save: made by the save
        try:
            os.makedirs(folder, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as error:
            raise OSError(
                error.errno,
                f"{self.state_key} cannot write into {folder}: {error.strerror}",
            ) from error

    def _remove_unfinished(self) -> None:
        """What writes killed half-way left (a crash of an earlier run)."""
        stale = remove_stale_partials(_glob_of(self.filename_base))
        if stale:
            log.warning("removed %d files of checkpoint writes that never ended", len(stale))

    def on_batch_done(self, state: dict[str, Any]) -> None:
        if not self._name_checked:  # after one step, not one epoch
            self._name_checked = True
            self._check_name(state)
        if self.every is not None and (state.get("iters", 0) + 1) % self.every == 0:
            self.save(state)

    def on_epoch_done(self, state: dict[str, Any]) -> None:
        self.save(state)

    def on_run_end(self, state: dict[str, Any]) -> None:
        if not context.current().progress.epoch_done:
            self.save(state)  # stopped mid-epoch: the final checkpoint
        self.wait()
        if self._watched is not None:
            self._watched.run_ended(state)

    # -- how --------------------------------------------------------------------------
    def save(self, state: dict[str, Any]) -> str:
        """Snapshot now and queue the write; returns the file name.

        In a distributed run every rank calls this at the same step (it gathers the
        ranks' RNG states into the checkpoint) and rank 0 alone writes.
        """
        path = self.path_for(state)
        here = world()
        if here.distributed and getattr(self.objects, "strategy", None) == "fsdp":
            raise RuntimeError(
                "Checkpoint writes one file from rank 0, and this recipe's modules are "
                "sharded (strategy='fsdp'): use ShardedCheckpoint"
            )
        writes = not here.distributed or here.is_main
        stale = self._keep(path) if writes else []  # before the snapshot: it records itself
        saved = _state_of(self.objects)
        if here.distributed:
            _add_every_ranks_rng(saved)
            if not here.is_main:
                return path
        score = self._monitored(state)
        snapshot = host_snapshot({"state": saved, "score": score})
        self._ensure_writer()
        run = context.current_or_none()  # save() may be called outside a run too
        self._queue_job(_Job(path, snapshot, stale, run.publish if run else _nowhere))
        return path

    def _check_name(self, state: dict[str, Any]) -> None:
        try:
            self.path_for(state)
        except ValueError as error:
            warnings.warn(
                f"{error}, after the first step: saving will fail unless a callback sets it",
                RuntimeWarning,
                stacklevel=2,
            )

    def path_for(self, state: dict[str, Any]) -> str:
        """``filename_base.format(**state)``, or a ValueError naming what it lacks."""
        try:
            return self.filename_base.format(**state)
        except (KeyError, IndexError, AttributeError) as error:
            held = sorted(k for k in state if not k.startswith("_"))
            raise ValueError(
                f"the checkpoint name {self.filename_base!r} asks for {error}, which the "
                f"state does not hold (it holds {held})"
            ) from None

    def _queue_job(self, job: _Job) -> None:
        """At most one snapshot waits for the writer, at most ``timeout_s``."""
        with self._written:
            self._pending += 1
        try:
            self._queue.put(job, timeout=self.timeout_s)
        except queue.Full:
            with self._written:
                self._pending -= 1
            self._unkeep(job.path, job.stale)
            raise TimeoutError(f"checkpoint {job.path} was not saved: {self._stuck_on()}") from None

    def _keep(self, path: str) -> list[str]:
        """Add ``path`` to the files kept; returns those that fall out."""
        with self._lock:
            if path in self.saved:
                self.saved.remove(path)
            self.saved.append(path)
            stale = self.saved[: max(0, len(self.saved) - self.max_saves)]
            del self.saved[: len(stale)]
        return stale

    def _unkeep(self, path: str, stale: list[str]) -> None:
        """A write failed: the files it would have replaced are kept (and pruned by a
        later checkpoint)."""
        with self._lock:
            if path in self.saved:
                self.saved.remove(path)
            self.saved[:0] = [old for old in stale if os.path.exists(old)]

    def _monitored(self, state: dict[str, Any]) -> Any:
        """The monitored value, as it is (a device tensor is read by the writer)."""
        if self._watched is None:
            return None
        return self._watched.get(state)  # None before the first evaluation

    def wait(self) -> None:
        """Block until every queued checkpoint is on disk, at most ``timeout_s``."""
        with self._written:
            if not self._written.wait_for(lambda: self._pending == 0, self.timeout_s):
                raise TimeoutError(f"checkpoints not all saved: {self._stuck_on()}")

    def _stuck_on(self) -> str:
        writing = self._writing or "the previous checkpoint"
        return (
            f"{writing} was still being written after {self.timeout_s:.0f} s (a disk or "
            "network share that stopped answering?)"
        )

    def _ensure_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(
                target=self._write_forever, name="evloop-checkpoint", daemon=True
            )
            self._writer.start()

    def _write_forever(self) -> None:
        while True:
            job = self._queue.get()
            self._writing = job.path
            try:
                self._write(job)
            except Exception as error:  # the previous checkpoints stay intact
                self.last_error = error
                self._unkeep(job.path, job.stale)
                message = _plain_error(job.path, error)
                log.error("checkpoint %s was not written: %s", job.path, message)
                job.publish(CheckpointFailed(path=job.path, error=message))
            finally:
                with self._written:
                    self._writing = None
                    self._pending -= 1
                    self._written.notify_all()

    def _write(self, job: _Job) -> None:
        payload = job.snapshot.wait()
        state = payload["state"]
        score = self._score(job.path, state, payload["score"])
        new_best = score is not None and (self.best is None or score >= self.best)
        if new_best:
            self.best, self.best_file = score, best_path(job.path)
        # the file records the best as of its own write (a resume from it knows it)
        own = _own_state(state, self.state_key)
        if own is not None:
            own.update(best=self.best, best_file=self.best_file)
        atomic_save(state, job.path, self.checksum)
        for old in job.stale:
            if old != job.path and os.path.exists(old):
                os.remove(old)
        if new_best:
            assert self.best_file is not None
            atomic_save(state, self.best_file, self.checksum)
            self._remove_other_best_files(self.best_file)

    def _score(self, path: str, state: Any, monitored: Any) -> float | None:
        """Higher is better (a monitored value in ``'min'`` mode is negated)."""
        if self.monitor is not None:
            if monitored is None:
                return None
            value = float(monitored)
            return -value if self.mode == "min" else value
        if self.key_best is None:
            return None
        try:
            return float(self.key_best(state))
        except Exception as error:  # e.g. no test metric before the first evaluation
            log.warning("checkpoint %s written; key_best failed, best unchanged: %r", path, error)
            return None

    def _remove_other_best_files(self, best: str) -> None:
        """One best file, whatever earlier runs (resumed from older states) left."""
        pattern = best_path(_glob_of(self.filename_base))
        for other in glob.glob(pattern):
            if os.path.abspath(other) != os.path.abspath(best):
                with contextlib.suppress(OSError):
                    os.remove(other)

    # -- its own state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"saved": list(self.saved), "best": self.best, "best_file": self.best_file}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = list(state.get("saved", []))
        self.best = state.get("best")
        self.best_file = state.get("best_file")


class _Job(NamedTuple):
    path: str
    snapshot: HostCopy
    stale: list[str]
    publish: Callable[[Event], None]


def _nowhere(event: Event) -> None:
    pass


def _plain_error(path: str, error: Exception) -> str:
    """What went wrong, said plainly (a full disk says so, whatever the library)."""
    directory = os.path.dirname(os.path.abspath(path))
    full = isinstance(error, OSError) and error.errno == errno.ENOSPC
    try:
        full = full or shutil.disk_usage(directory).free < 1024 * 1024
    except OSError:
        pass
    if full:
        return f"no space left on device: {directory} ({path} not written)"
    return f"{type(error).__name__}: {error}"


def _own_state(state: Any, key: str) -> dict[str, Any] | None:
    """Where a checkpoint's own bookkeeping sits in the state it saves (the recipe's
    ``callbacks`` entry, at any depth)."""
    if isinstance(state, dict):
        own = state.get(key)
        if isinstance(own, dict) and "saved" in own and "best_file" in own:
            return own
        for value in state.values():
            found = _own_state(value, key)
            if found is not None:
                return found
    return None


def _glob_of(filename_base: str) -> str:
    """``ckpt_{epoch}.pth`` → ``ckpt_*.pth``: every name the base can format to."""
    return re.sub(r"\{[^{}]*\}", "*", filename_base)
