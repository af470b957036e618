"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP).

A save is a folder: every rank writes its own shards of the registered modules and
optimizers (``__<rank>_0.distcp``, then ``.metadata`` from rank 0 once every rank's
shards are written), and rank 0 writes the rest of the recipe's state — counters,
callbacks, every rank's RNG states — as ``recipe.pth``. It is written as
``<name>.partial`` and renamed to ``<name>`` when complete, so a save killed half-way
never replaces the last good one and is never loaded.

Loading re-shards: a save made by 2 processes resumes on 1 (or on 4), since DCP
reads whatever slices each rank now holds.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ..checkpoint_io import atomic_save, fsync_directory, load
from . import all_gather_objects, world
from .saving import optimizers_of, shards_saved_apart

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = [
    "save_sharded",
    "load_sharded",
    "latest_sharded",
    "sharded_problem",
    "PARTIAL",
    "RECIPE_FILE",
]

log = logging.getLogger("evloop")
PARTIAL = ".partial"
RECIPE_FILE = "recipe.pth"
METADATA_FILE = ".metadata"


def _sharded_parts(recipe: Recipe) -> tuple[torch.nn.Module, dict[str, torch.optim.Optimizer]]:
    """The registered modules as one module (names become prefixes) and the registered
    optimizers: what DCP saves shard by shard."""
    modules = torch.nn.ModuleDict({name: getattr(recipe, name) for name in recipe.module_names()})
    return modules, optimizers_of(recipe)


def _sharded_state(recipe: Recipe) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    modules, optimizers = _sharded_parts(recipe)
    return {
        "modules": get_model_state_dict(modules),
        "optimizers": {n: get_optimizer_state_dict(modules, o) for n, o in optimizers.items()},
    }


def _recipe_rest(recipe: Recipe) -> dict[str, Any]:
    """What is not sharded: the recipe's state without modules and optimizers, with
    every rank's RNG states (a collective)."""
    optimizers = optimizers_of(recipe)
    with shards_saved_apart():
        whole = recipe.state_dict()
    sharded = {*recipe.module_names(), *optimizers}
    rest = {k: v for k, v in whole.items() if k not in sharded}
    rest["progress"]["rng_by_rank"] = all_gather_objects(rest["progress"].get("rng"))
    return rest


def save_sharded(
    recipe: Recipe,
    path: str,
    process_group: Any = None,
    on_complete: Callable[[BaseException | None], None] | None = None,
) -> Future[Any]:
    """Start saving ``recipe`` to the folder ``path`` (every rank calls this at the same
    step); returns when the state is staged in host memory, the writing goes on in
    the background. ``on_complete(error)`` runs on rank 0 after the folder is renamed
    into place (or the save failed); on rank 0 the future is done after that.
    ``process_group``: the group DCP's background collectives use (not the training's
    own, so they never interleave)."""
    import torch.distributed.checkpoint as dcp

    partial = path + PARTIAL
    here = world()
    if here.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
    rest = _recipe_rest(recipe)
    if here.distributed:
        dist.barrier()  # the folder exists before any rank writes into it
    if here.is_main:
        atomic_save(rest, os.path.join(partial, RECIPE_FILE))
    future = dcp.async_save(
        _sharded_state(recipe),
        checkpoint_id=partial,
        process_group=process_group,
        no_dist=not here.distributed,
    )
    assert isinstance(future, Future)  # the thread checkpointer's answer
    if not here.is_main:
        return future
    # Done once the folder has its final name: DCP's future is done as soon as the
    # shards are written, and whoever waits on it would otherwise go on (end the
    # process) before the rename, leaving a save that the next run discards.
    renamed: Future[Any] = Future()

    def finish(done: Future[Any]) -> None:
        error = _finish(done, partial, path, on_complete)
        if error is None:
            renamed.set_result(None)
        else:
            renamed.set_exception(error)

    future.add_done_callback(finish)
    return renamed


def _finish(
    done: Future[Any],
    partial: str,
    path: str,
    on_complete: Callable[[BaseException | None], None] | None,
) -> BaseException | None:
    """Rename a written save into place; the save's error (None when it is in place)."""
    error = done.exception()
    if error is None:
        try:
            if os.path.exists(path):
                shutil.rmtree(path)
            os.replace(partial, path)
            fsync_directory(os.path.dirname(os.path.abspath(path)))
        except OSError as failed:
            error = failed
    if on_complete is not None:
        on_complete(error)
    return error


def is_complete(path: str) -> bool:
    """Whether ``path`` is a finished sharded save (renamed, with DCP's metadata and the
    recipe's own state)."""
    return (
        not path.endswith(PARTIAL)
        and os.path.isfile(os.path.join(path, METADATA_FILE))
        and os.path.isfile(os.path.join(path, RECIPE_FILE))
    )


def sharded_problem(path: str) -> str | None:
    """Why the sharded save ``path`` cannot be loaded, or None: it must be complete,
    its recipe state must match its CRCs, and every shard file its metadata names must
    be in the folder at its full length (a truncated copy is found here, not half-way
    through a load)."""
    import torch.distributed.checkpoint as dcp

    if not is_complete(path):
        return "a sharded save that never completed (no .metadata or recipe.pth)"
    try:
        load(os.path.join(path, RECIPE_FILE))
        metadata = dcp.FileSystemReader(path).read_metadata()
    except Exception as error:  # corrupt: said, and an older save tried
        return f"{type(error).__name__}: {error}"
    needed: dict[str, int] = {}
    for info in getattr(metadata, "storage_data", {}).values():
        name = str(info.relative_path)
        needed[name] = max(needed.get(name, 0), int(info.offset) + int(info.length))
    folder = os.path.realpath(path)
    for name, length in sorted(needed.items()):
        shard = os.path.realpath(os.path.join(folder, name))
        if os.path.dirname(shard) != folder:
            return f"its metadata names a shard outside the folder: {name!r}"
        size = os.path.getsize(shard) if os.path.isfile(shard) else None
        if size is None:
            return f"its shard {name} is missing"
        if size < length:
            return f"its shard {name} is truncated ({size} of at least {length} bytes)"
    return None


def latest_sharded(pattern: str) -> str | None:
    """The newest complete sharded save among the folders ``pattern`` (a glob) matches;
    saves that never completed (killed mid-way) are skipped with a warning."""
    folders = [p for p in glob.glob(pattern) if os.path.isdir(p)]
    for path in sorted(folders, key=os.path.getmtime, reverse=True):
        if is_complete(path):
            return path
        log.warning("skipping %s: a sharded save that never completed", path)
    return None


def remove_partial_saves(pattern: str) -> list[str]:
    """Folders of saves killed before their rename: removed (rank 0); returns them."""
    stale = [p for p in glob.glob(pattern + PARTIAL) if os.path.isdir(p)]
    for path in stale:
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
    return stale


def load_sharded(recipe: Recipe, path: str) -> Recipe:
    """Load a sharded save into ``recipe`` (every rank calls this): its modules are
    placed and sharded first, so each rank reads only its own slices, on any world
    size. Returns the recipe."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete sharded save (no metadata or state)")
    recipe.current_run.start_plugins()
    state = _sharded_state(recipe)
    dcp.load(state, checkpoint_id=path, no_dist=not world().distributed)
    modules, optimizers = _sharded_parts(recipe)
    set_model_state_dict(modules, state["modules"])
    for name, optimizer in optimizers.items():
        set_optimizer_state_dict(modules, optimizer, state["optimizers"][name])
    # the modules' weights came from the shards: the recipe file holds the rest
    recipe.load_state_dict(load(os.path.join(path, RECIPE_FILE)), strict=False)
    return recipe
