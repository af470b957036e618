"""ShardedCheckpoint: every rank writes its own shards, in the background."""

from __future__ import annotations

import concurrent.futures
import logging
import shutil
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from .. import context
from ..distributed import world
from ..distributed.checkpoint import remove_partial_saves, save_sharded
from ..events import CheckpointFailed
from ._checkpoint_writer import glob_of, plain_error
from .checkpoint import Checkpoint

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["ShardedCheckpoint"]

log = logging.getLogger("evloop")


class ShardedCheckpoint(Checkpoint):
    """Saves ``recipe`` as a folder named ``directory_base.format(**state)`` with
    ``torch.distributed.checkpoint``: each rank writes its own shards of the modules
    and optimizers (an FSDP2 model never gathers on one rank), rank 0 the recipe's
    other state (counters, callbacks, every rank's RNG). Same schedule, rotation
    (``max_saves``) and failure events as :class:`Checkpoint`.

    Asynchronous: training waits only while the state is staged in host memory; at
    most one save is in flight (the next one waits for it, at most ``timeout_s``).
    A save killed half-way stays a ``.partial`` folder, removed at the next run's
    start and never loaded. Resume with
    ``evloop.distributed.checkpoint.load_sharded(recipe, latest_sharded(glob))``.
    """

    def __init__(
        self,
        directory_base: str,
        recipe: Recipe,
        max_saves: int = 3,
        every: int | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        super().__init__(
            directory_base, recipe, max_saves=max_saves, every=every, timeout_s=timeout_s
        )
        self._in_flight: concurrent.futures.Future[Any] | None = None
        self._in_flight_path = ""
        self._group: Any = None

    @property
    def state_key(self) -> str:
        return f"ShardedCheckpoint[{self.filename_base}]"

    def _remove_unfinished(self) -> None:
        stale = remove_partial_saves(glob_of(self.filename_base))
        if stale:
            log.warning("removed %d sharded saves that never completed", len(stale))

    def save(self, state: dict[str, Any]) -> str:
        """Stage the state and start writing it (every rank, at the same step);
        returns the folder's name."""
        self.wait()
        path = self.path_for(state)
        stale = self._keep(path) if world().is_main else []
        run = context.current_or_none()
        publish = run.publish if run is not None else None

        def complete(error: BaseException | None) -> None:
            if error is None:
                self._remove(stale, keep=path)
                return
            self.last_error = error
            self._unkeep(path, stale)
            message = plain_error(path, error) if isinstance(error, Exception) else repr(error)
            log.error("sharded checkpoint %s was not written: %s", path, message)
            if publish is not None:
                publish(CheckpointFailed(path=path, error=message))

        self._in_flight = save_sharded(self.objects, path, self._process_group(), complete)
        self._in_flight_path = path
        return path

    def _process_group(self) -> Any:
        """A group of its own for DCP's background collectives, made once (a collective:
        every rank saves at the same step)."""
        if self._group is None and world().distributed:
            self._group = dist.new_group(backend="gloo")
        return self._group

    def _remove(self, stale: list[str], keep: str) -> None:
        for old in stale:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    def unwritten(self) -> list[str]:
        """The save being written now, if any."""
        future = self._in_flight
        return [self._in_flight_path] if future is not None and not future.done() else []

    def wait(self) -> None:
        """Block until the save in flight is written (at most ``timeout_s``)."""
        future, self._in_flight = self._in_flight, None
        if future is None:
            return
        try:
            future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"the sharded checkpoint {self.saved[-1:] or ''} was still being written "
                f"after {self.timeout_s:.0f} s (a rank stopped answering?)"
            ) from None
        except Exception:  # reported by complete() on rank 0; training goes on
            pass
