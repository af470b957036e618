"""Checkpoint: consistent snapshots on the training thread, atomic writes beside it."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from .. import context
from ..checkpoint_io import atomic_save, host_snapshot
from ..distributed import all_gather_objects, world
from ..host import HostCopy

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
    memory; a background thread writes it atomically (temporary file, fsync, rename),
    keeps the newest ``max_saves`` files, and writes ``<name>_best.<ext>`` (removing the
    previous best file) when ``key_best(saved_state)`` is at least the best so far.
    At most one snapshot waits for the writer: training waits rather than piling up
    copies. Load a file with :func:`evloop.checkpoint_io.load` (``weights_only=True``).
    """

    def __init__(
        self,
        filename_base: str,
        objects: Any,
        max_saves: int = 10,
        key_best: Callable[[Any], float] | None = None,
        every: int | None = None,
    ) -> None:
        if max_saves < 1:
            raise ValueError(f"max_saves must be at least 1, got {max_saves}")
        self.filename_base = filename_base
        self.objects = objects
        self.max_saves = max_saves
        self.key_best = key_best
        self.every = every
        self.saved: list[str] = []
        self.best: float | None = None
        self.best_file: str | None = None
        self.last_error: BaseException | None = None
        self._queue: queue.Queue[tuple[str, HostCopy] | None] = queue.Queue(maxsize=1)
        self._writer: threading.Thread | None = None

    @property
    def state_key(self) -> str:
        return f"Checkpoint[{self.filename_base}]"

    # -- when -------------------------------------------------------------------------
    def on_batch_done(self, state: dict[str, Any]) -> None:
        if self.every is not None and (state.get("iters", 0) + 1) % self.every == 0:
            self.save(state)

    def on_epoch_done(self, state: dict[str, Any]) -> None:
        self.save(state)

    def on_run_end(self, state: dict[str, Any]) -> None:
        if not context.current().progress.epoch_done:
            self.save(state)  # stopped mid-epoch: the final checkpoint
        self.wait()

    # -- how --------------------------------------------------------------------------
    def save(self, state: dict[str, Any]) -> str:
        """Snapshot now and queue the write; returns the file name.

        In a distributed run every rank calls this at the same step (it gathers the
        ranks' RNG states into the checkpoint) and rank 0 alone writes.
        """
        path = self.filename_base.format(**state)
        saved = _state_of(self.objects)
        here = world()
        if here.distributed:
            _add_every_ranks_rng(saved)
            if not here.is_main:
                return path
        snapshot = host_snapshot(saved)
        self._ensure_writer()
        self._queue.put((path, snapshot))
        return path

    def wait(self) -> None:
        """Block until every queued checkpoint is on disk."""
        if self._writer is not None:
            self._queue.join()

    def _ensure_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(
                target=self._write_forever, name="evloop-checkpoint", daemon=True
            )
            self._writer.start()

    def _write_forever(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except Exception as error:  # the previous checkpoints stay intact
                self.last_error = error
                log.error("checkpoint %s was not written: %r", item and item[0], error)
            finally:
                self._queue.task_done()

    def _write(self, path: str, snapshot: HostCopy) -> None:
        state = snapshot.wait()
        atomic_save(state, path)
        if path in self.saved:
            self.saved.remove(path)
        self.saved.append(path)
        while len(self.saved) > self.max_saves:
            oldest = self.saved.pop(0)
            if os.path.exists(oldest):
                os.remove(oldest)
        if self.key_best is not None:
            self._update_best(path, state)

    def _update_best(self, path: str, state: Any) -> None:
        try:
            score = float(self.key_best(state))  # type: ignore[misc]
        except Exception as error:  # e.g. no test metric before the first evaluation
            log.warning("checkpoint %s written; key_best failed, best unchanged: %r", path, error)
            return
        if self.best is None or score >= self.best:
            self.best = score
            best = best_path(path)
            atomic_save(state, best)
            if self.best_file not in (None, best) and os.path.exists(self.best_file):
                os.remove(self.best_file)
            self.best_file = best

    # -- its own state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"saved": list(self.saved), "best": self.best, "best_file": self.best_file}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = list(state.get("saved", []))
        self.best = state.get("best")
        self.best_file = state.get("best_file")
