"""Checkpoint: consistent snapshots on the training thread, atomic writes beside it."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from .. import context
from ..checkpoint_io import atomic_save, host_snapshot, remove_checkpoint, remove_stale_partials
from ..distributed import barrier, world
from ..events import Event
from ..host import HostCopy
from ._checkpoint_evaluations import (
    Ended,
    FollowedEvaluations,
    Waiting,
    drop_results,
    followed_prefix,
    names_of,
    put_results,
    warn_unpaired_key_best,
)
from ._checkpoint_writer import (
    Job,
    Writer,
    add_every_ranks_rng,
    best_path,
    check_arguments,
    check_writable,
    glob_of,
    keep_newest,
    own_state,
    remove_other_best_files,
    score_of,
    state_of,
    unkeep,
)
from .call_recipe import CallRecipe, Evaluation
from .watched import WatchedValue

__all__ = ["Checkpoint", "best_path"]

log = logging.getLogger("evloop")


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
    ``key_best(saved_state)`` is at least the best so far.

    **A score and the weights it came from are always saved together.** With
    ``evaluation='test'`` (the ``prefix`` of a :class:`CallRecipe` of the same recipe),
    or a ``monitor`` that reads that evaluation's metrics (``'test_metrics.acc'``), the
    checkpoint follows the evaluation instead of epoch ends: after each evaluation it
    saves the very state that was evaluated, named after its step (``ckpt_{iters}``
    formats with the evaluated iteration) and holding its results — written at that
    step for an inline evaluation, and for a concurrent one from a host copy of that
    step's state once the results are back, while training went on. Only these files
    are scored and may become the best file; a run's end always leaves a file of its
    final state, and ``every`` adds unscored resume points.

    At most one snapshot waits for the writer: training waits rather than piling up
    copies, at most ``timeout_s`` (as does the run's end for the last write): a write
    stuck longer (a disk or network share that stopped answering) raises
    ``TimeoutError`` naming its file. ``checksum=True`` also writes a SHA-256 digest
    beside each file (``.sha256``), checked on loading; without it, loading still
    checks the CRC of every record of the file. Load a file with
    :func:`evloop.checkpoint_io.load` (``weights_only=True``).
    """

    exchanges_between_ranks = True
    """In a distributed run it takes part in collectives: every rank must have it."""

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
        evaluation: str | None = None,
    ) -> None:
        check_arguments(filename_base, max_saves, key_best, every, monitor, mode, timeout_s)
        self.filename_base = filename_base
        self.objects = objects
        self.max_saves = max_saves
        self.key_best = key_best
        self.every = every
        self.monitor = monitor
        self.evaluation = evaluation
        self._watched = None if monitor is None else WatchedValue(self.state_key, monitor)
        self.mode = mode
        self.checksum = checksum
        self._lock = threading.Lock()  # the bookkeeping, shared with the writer
        self.saved: list[str] = []
        self.best: float | None = None
        self.best_file: str | None = None
        self.last_error: BaseException | None = None
        """The last failed write's error."""
        self._writer = Writer(timeout_s, self._write, self._write_failed)
        self._name_checked = False  # whether the state held what the name asks for
        self._followed = FollowedEvaluations()
        self._saved_at: int | None = None  # the iteration of the last save
        self._ending = False  # in on_run_end
        self._results_at: dict[str, tuple[int, Any]] = {}  # prefix → (iters, loop) in state

    @property
    def state_key(self) -> str:
        return f"Checkpoint[{self.filename_base}]"

    @property
    def timeout_s(self) -> float:
        """How long a save waits for room, and the run's end for the last write."""
        return self._writer.timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self._writer.timeout_s = value

    @property
    def follows(self) -> str | None:
        """The prefix of the evaluation this checkpoint follows in the current run."""
        return self._followed.prefix

    # -- when -------------------------------------------------------------------------
    def on_run_start(self, state: dict[str, Any]) -> None:
        self._name_checked = False
        self._saved_at = None
        callbacks = list(context.current().recipe.callbacks.callbacks())
        prefix = followed_prefix(callbacks, self.evaluation, self.monitor, self.state_key)
        self._followed.follow(prefix)
        iters = context.current().progress.iters  # a loaded state's results are its own
        self._results_at = {
            cb.prefix: (iters, cb.loop)
            for cb in callbacks
            if isinstance(cb, CallRecipe) and f"{cb.prefix}_metrics" in state
        }
        if prefix is None and self.key_best is not None:
            warn_unpaired_key_best(self.state_key, callbacks)
        if world().is_main:  # rank 0 writes; its write may still be going on
            self._check_folder()
            self._remove_unfinished()

    def _check_folder(self) -> None:
        """A folder that cannot be written fails the run now, before training, rather
        than each save failing (and being reported) while training goes on."""
        check_writable(os.path.dirname(os.path.abspath(self.filename_base)), self.state_key)

    def _remove_unfinished(self) -> None:
        """What writes killed half-way left (a crash of an earlier run)."""
        stale = remove_stale_partials(glob_of(self.filename_base))
        if stale:
            log.warning("removed %d files of checkpoint writes that never ended", len(stale))

    def on_eval_start(self, state: dict[str, Any], evaluation: Evaluation) -> None:
        self._followed.start(evaluation)

    def on_eval_end(self, state: dict[str, Any], evaluation: Evaluation) -> None:
        self._results_at[evaluation.prefix] = (evaluation.iters, evaluation.loop)
        if self._followed.end(evaluation, self.objects) and self._ending:
            self._save_evaluated(state)  # the run's final evaluation, after our own end

    def on_batch_done(self, state: dict[str, Any]) -> None:
        if not self._name_checked:  # after one step, not one epoch
            self._name_checked = True
            self._check_name(state)
        if self._followed.prefix is not None:
            self._save_evaluated(state)
        if self.every is not None and (state.get("iters", 0) + 1) % self.every == 0:
            self.save(state)

    def on_epoch_done(self, state: dict[str, Any]) -> None:
        if self._followed.prefix is None:
            self.save(state)
        else:
            self._save_evaluated(state)

    def on_run_end(self, state: dict[str, Any]) -> None:
        self._ending = True
        try:
            if self._followed.prefix is not None:
                self._save_evaluated(state)
                unsaved = self._followed.waiting  # evaluations that never came back
                if unsaved or self._saved_at != context.current().progress.iters:
                    self.save(state)  # the final state, whatever was evaluated
            elif not context.current().progress.epoch_done:
                self.save(state)  # stopped mid-epoch: the final checkpoint
            self.wait()
            if world().distributed:  # no rank's run ends before rank 0's files are on disk
                barrier()
        finally:
            self._ending = False
        if self._watched is not None:
            self._watched.run_ended(state)

    # -- how --------------------------------------------------------------------------
    def save(self, state: dict[str, Any]) -> str:
        """Snapshot now and queue the write; returns the file name.

        In a distributed run every rank calls this at the same step (it gathers the
        ranks' RNG states into the checkpoint) and rank 0 alone writes. A checkpoint
        that follows an evaluation saves an unscored resume point here.
        """
        path = self.path_for(state)
        saved = self._snapshot_state()
        if saved is not None:
            scored = self._followed.prefix is None
            self._queue(path, host_snapshot(saved), self._monitored(state), scored)
        return path

    def _snapshot_state(self, leave_out: list[str] | None = None) -> Any:
        """The state of ``objects`` now (on rank 0; None on the other ranks, after their
        part of the collective), without the registered objects ``leave_out`` names."""
        here = world()
        if here.distributed and getattr(self.objects, "strategy", None) == "fsdp":
            raise RuntimeError(
                "Checkpoint writes one file from rank 0, and this recipe's modules are "
                "sharded (strategy='fsdp'): use ShardedCheckpoint"
            )
        run = context.current_or_none()
        self._saved_at = run.progress.iters if run is not None else None  # on every rank
        if leave_out:
            saved = self.objects.state_dict(leave_out=leave_out)
        else:
            saved = state_of(self.objects)
        if here.distributed:
            add_every_ranks_rng(saved)
            if not here.is_main:
                return None
        for prefix, (evaluated, loop) in self._results_at.items():
            if run is not None and evaluated != run.progress.iters:
                drop_results(saved, self.objects, prefix, loop)
        return saved

    def _queue(
        self,
        path: str,
        saved: HostCopy,
        monitored: Any,
        scored: bool,
        evaluated: Ended | None = None,
        taken: float | None = None,
    ) -> None:
        """Hand the state saved in this step, or in an evaluated one's, to the writer."""
        run = context.current_or_none()
        stale = self._keep(path)
        own = own_state(saved.value, self.state_key)
        if own is not None:  # the file records the files kept with it
            own["saved"] = list(self.saved)
        results = evaluated.results if evaluated is not None else None
        extras = host_snapshot({"score": monitored, "evaluation": results})
        publish = run.publish if run is not None else _nowhere
        taken = time.time() if taken is None else taken  # when the state was taken
        self._writer.put(Job(path, saved, extras, stale, publish, scored, taken))

    def _save_evaluated(self, state: dict[str, Any]) -> None:
        """At a step boundary: a file for each followed evaluation that ended, from the
        state it evaluated; a snapshot for each one still running."""
        ended, running = self._followed.take()
        for done in ended:
            evaluation = done.evaluation
            waiting = self._followed.waiting.pop(evaluation.iters, None)
            if waiting is not None:  # concurrent: its step's state, with its results
                monitored = self._monitored_in(evaluation, waiting.monitored)
                self._queue(waiting.path, waiting.snapshot, monitored, True, done, waiting.taken)
            elif evaluation.iters == context.current().progress.iters:
                saved = self._snapshot_state()  # the live state is the evaluated one
                if saved is not None:
                    monitored = self._monitored_in(evaluation, self._monitored(state))
                    self._queue(self.path_for(state), host_snapshot(saved), monitored, True)
        for evaluation in running:  # its own state comes with its results
            saved = self._snapshot_state(leave_out=names_of(self.objects, evaluation))
            if saved is not None:
                path, monitored = self.path_for(state), self._monitored(state)
                self._followed.waiting[evaluation.iters] = Waiting(
                    path, host_snapshot(saved), monitored, time.time()
                )

    def _monitored_in(self, evaluation: Evaluation, otherwise: Any) -> Any:
        """The monitored value in ``evaluation``'s results when it reads them."""
        if self._watched is None:
            return otherwise
        root = f"{evaluation.prefix}_metrics"
        if self._watched.path.split(".", 1)[0] != root:
            return otherwise
        return self._watched.get({root: evaluation.metrics})

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

    def _keep(self, path: str) -> list[str]:
        """Add ``path`` to the files kept; returns those that fall out."""
        with self._lock:
            return keep_newest(self.saved, path, self.max_saves)

    def _unkeep(self, path: str, stale: list[str]) -> None:
        """A write failed: the files it would have replaced are kept (and pruned by a
        later checkpoint)."""
        with self._lock:
            unkeep(self.saved, path, stale)

    def _monitored(self, state: dict[str, Any]) -> Any:
        """The monitored value, as it is (a device tensor is read by the writer)."""
        if self._watched is None:
            return None
        return self._watched.get(state)  # None before the first evaluation

    def wait(self) -> None:
        """Block until every queued checkpoint is on disk, at most ``timeout_s``."""
        self._writer.wait()

    def unwritten(self) -> list[str]:
        """The checkpoints being written now, or waiting to be."""
        return self._writer.unwritten()

    # -- the writer thread ------------------------------------------------------------
    def _write_failed(self, job: Job, error: BaseException) -> None:
        self.last_error = error
        self._unkeep(job.path, job.stale)

    def _write(self, job: Job) -> None:
        state, extras = job.state.wait(), job.extras.wait()
        put_results(state, extras["evaluation"])
        score = None
        if job.scored:
            score = score_of(
                self.monitor, self.mode, self.key_best, job.path, state, extras["score"]
            )
        new_best = score is not None and (self.best is None or score >= self.best)
        if new_best:
            self.best, self.best_file = score, best_path(job.path)
        # the file records the best as of its own write (a resume from it knows it)
        own = own_state(state, self.state_key)
        if own is not None:
            own.update(best=self.best, best_file=self.best_file)
        atomic_save(state, job.path, self.checksum)
        os.utime(job.path, (job.taken, job.taken))
        for old in job.stale:
            if old != job.path:
                remove_checkpoint(old)
        if new_best:
            assert self.best_file is not None
            atomic_save(state, self.best_file, self.checksum)
            os.utime(self.best_file, (job.taken, job.taken))
            remove_other_best_files(self.filename_base, self.best_file)

    # -- its own state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"saved": list(self.saved), "best": self.best, "best_file": self.best_file}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = list(state.get("saved", []))
        self.best = state.get("best")
        self.best_file = state.get("best_file")


def _nowhere(event: Event) -> None:
    pass
