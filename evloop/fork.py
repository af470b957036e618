"""Forking a run: a new run folder that starts from one of a run's checkpoints with some
settings changed, its lineage recorded (``evloop fork RUN_DIR --set lr=1e-4``).

A fork is the run as if, right after its checkpoint's step, ``set lr=1e-4`` had been
sent to it (``evloop ctl``), continued in a folder of its own: the new folder gets a
copy of the checkpoint (at the same place inside it as in the parent's folder), the
settings inside that copy, and ``fork.json`` (:mod:`evloop.lineage`). The run's own
script, pointed at the new folder, then continues from the copy with
``recipe.run(total_epochs=..., resume='auto')`` (the demo: ``evloop demo --resume
NEW_FOLDER``): weights, optimizer, schedule, counters and random generators as the
checkpoint has them, its steps numbered on from the checkpoint's, the settings set at
its start, checked as ``set`` checks them.

The parent's folder is only read. The copy of the checkpoint stays in the new folder
(its rotation never removes it: the fork point is kept), and the new run's best file
is chosen among its own checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .checkpoint_io import CHECKSUM_SUFFIX, TMP_SUFFIX, atomic_save, load
from .control import CommandError, Setting
from .decoding import decode_any_json
from .lineage import write_lineage
from .loggers.summary import SUMMARY_FILE

__all__ = ["fork", "Fork", "ForkError", "CHECKPOINT_SUFFIXES"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
"""The files a fork without ``checkpoint`` looks at, in the run folder and below."""
MAX_SUMMARY = 1024 * 1024


class ForkError(ValueError):
    """A fork that cannot be made, and why; nothing was written."""


@dataclass(frozen=True)
class Fork:
    """A fork that was made: its ``run_dir``, the ``checkpoint`` copied there (from
    ``source`` in ``parent_dir``), the ``iters`` and ``epoch`` it starts from, and the
    ``settings`` it changes."""

    run_dir: str
    parent_dir: str
    checkpoint: str
    source: str
    iters: int
    epoch: int
    settings: dict[str, Any] = field(default_factory=dict)


def fork(
    run_dir: str | os.PathLike[str],
    settings: Mapping[str, Any] | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    to: str | os.PathLike[str] | None = None,
) -> Fork:
    """Fork the run of ``run_dir`` from ``checkpoint`` (a file inside that folder;
    default: its newest checkpoint that verifies) with ``settings`` changed (checked
    against the domains the run recorded, as ``set`` is), into ``to`` (default: a
    new folder beside it, ``<name>-fork<iters>``). A :class:`ForkError` says why a
    fork cannot be made, before anything is written."""
    parent = _run_folder(run_dir)
    source, state = _checkpoint_of(parent, checkpoint)
    progress = state["progress"]
    iters, epoch = int(progress.get("iters", -1)), int(progress.get("epoch", 0))
    changes = _checked_settings(parent, dict(settings or {}))
    child = _new_folder(parent, to, iters)
    relative = source.relative_to(parent)
    copy = child / relative
    _prepare(state, changes)
    atomic_save(state, str(copy), checksum=os.path.exists(str(source) + CHECKSUM_SUFFIX))
    taken = source.stat().st_mtime  # the copy is as old as its state
    os.utime(copy, (taken, taken))
    lineage = {
        "parent": parent.name,
        "parent_dir": str(parent),
        "checkpoint": str(relative),
        "iters": iters,
        "epoch": epoch,
        "settings": changes,
        "time": time.time(),
    }
    write_lineage(str(child), lineage)
    _first_summary(parent, child, lineage)
    return Fork(str(child), str(parent), str(copy), str(source), iters, epoch, changes)


def _run_folder(run_dir: str | os.PathLike[str]) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise ForkError(f"{os.fspath(run_dir)!r} is not a run folder (no such folder)")
    return path.resolve()


def _checkpoint_of(
    parent: Path, checkpoint: str | os.PathLike[str] | None
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to fork from, resolved and inside ``parent``, and its state."""
    if checkpoint is not None:
        given = Path(checkpoint)
        # a relative path is read from here, or else from inside the run folder
        path = (given if given.is_absolute() or given.exists() else parent / given).resolve()
        if parent not in path.parents:
            raise ForkError(
                f"the checkpoint {os.fspath(checkpoint)!r} is not inside the run folder "
                f"{parent}: a fork starts from one of that run's own checkpoints"
            )
        if path.is_dir():
            raise ForkError(
                f"{os.fspath(checkpoint)!r} is a folder (a ShardedCheckpoint save?): "
                f"forking from sharded checkpoints is not supported yet"
            )
        if not path.is_file():
            raise ForkError(f"no checkpoint file {os.fspath(checkpoint)!r} in {parent}")
        problem, state = _readable(path)
        if problem is not None:
            raise ForkError(f"cannot fork from {path}: {problem}")
        return path, state
    skipped = []
    for path in _newest_first(parent):
        problem, state = _readable(path)
        if problem is None:
            return path, state
        skipped.append(f"{path.name}: {problem}")
    looked = ", ".join(f"*{s}" for s in CHECKPOINT_SUFFIXES)
    why = f" (skipped {'; '.join(skipped[:3])})" if skipped else ""
    raise ForkError(
        f"no checkpoint of a recipe in {parent} ({looked} files, in it and below){why}: "
        f"give one with --from (checkpoint=...)"
    )


def _newest_first(parent: Path) -> list[Path]:
    found = []
    for path in _files(parent):
        name = path.name
        if not name.endswith(CHECKPOINT_SUFFIXES) or name.endswith(TMP_SUFFIX):
            continue
        if os.path.splitext(name)[0].endswith("_best"):  # a copy of another file
            continue
        resolved = path.resolve()
        if parent not in resolved.parents:  # a link out of the folder
            continue
        try:
            found.append((resolved.stat().st_mtime, resolved))
        except OSError:
            continue
    return [path for _, path in sorted(found, reverse=True)]


def _files(folder: Path) -> Iterator[Path]:
    for root, _, names in os.walk(folder):  # links to folders are not followed
        for name in names:
            yield Path(root) / name


def _readable(path: Path) -> tuple[str | None, dict[str, Any]]:
    try:
        state = load(str(path))
    except Exception as error:  # corrupt, foreign, a folder of shards
        first = (str(error).strip().splitlines() or [repr(error)])[0][:200]
        return f"it does not load ({type(error).__name__}: {first})", {}
    progress = state.get("progress") if isinstance(state, dict) else None
    if not isinstance(progress, dict) or not isinstance(progress.get("iters"), int):
        return "it holds no recipe state (no progress): not a Checkpoint(..., recipe) file", {}
    return None, state


def _checked_settings(parent: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` checked as ``set`` checks them, against the domains the run
    recorded (a run that recorded none: numbers and true/false only; the run's start
    checks the rest)."""
    for name, value in settings.items():
        if not isinstance(name, str) or not name:
            raise ForkError(f"a setting's name must be a word, got {name!r}")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (isinstance(value, bool) or number):
            raise ForkError(f"{name} must be a number, true or false, got {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise ForkError(f"{name} must be a number, got nan")
    domains = _summary(parent).get("domains")
    if not isinstance(domains, dict) or not domains:
        return settings
    checked = {}
    for name, value in settings.items():
        if name not in domains:
            known = ", ".join(sorted(domains))
            raise ForkError(f"no setting {name!r} in {parent.name}; settings: {known}")
        try:
            checked[name] = _setting_from(name, domains[name]).check(value)
        except (CommandError, ValueError) as error:
            raise ForkError(str(error)) from None
    return checked


KINDS: dict[str, type] = {"float": float, "int": int, "bool": bool}


def _setting_from(name: str, domain: dict[str, Any]) -> Setting:
    """A setting that checks values as the one :meth:`Controls.domains` described
    (it gets and sets nothing); a ValueError for a description that is not one."""
    kind = KINDS.get(domain.get("kind", ""))
    bounds = [domain.get(k) for k in ("low", "high")]
    flags = [domain.get(k, False) for k in ("low_open", "high_open", "finite")]
    if (
        kind is None
        or not all(
            b is None or (isinstance(b, int | float) and not isinstance(b, bool)) for b in bounds
        )
        or not all(isinstance(f, bool) for f in flags)
    ):
        raise ValueError(f"{name}: not a setting's domain: {str(domain)[:80]}")
    hint = domain.get("hint", "")
    return Setting(
        name,
        lambda: None,
        lambda value: None,
        kind,
        low=bounds[0],
        high=bounds[1],
        low_open=flags[0],
        high_open=flags[1],
        finite=flags[2],
        hint=hint if isinstance(hint, str) else "",
    )


def _summary(folder: Path) -> dict[str, Any]:
    path = folder / SUMMARY_FILE
    try:
        if path.stat().st_size > MAX_SUMMARY:
            return {}
        fields = decode_any_json(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return {}
    return fields if isinstance(fields, dict) else {}


def _new_folder(parent: Path, to: str | os.PathLike[str] | None, iters: int) -> Path:
    if to is not None:
        child = Path(to).resolve()
        if child == parent or parent in child.parents:
            raise ForkError(f"the fork's folder {child} is inside the run it forks")
        if child.exists() and (not child.is_dir() or any(child.iterdir())):
            raise ForkError(f"{child} is not an empty folder: a fork gets a folder of its own")
        child.mkdir(parents=True, exist_ok=True)
        return child
    base = parent.with_name(f"{parent.name}-fork{iters}")
    child, n = base, 1
    while True:
        try:
            child.mkdir()
            return child
        except FileExistsError:
            n += 1
            child = base.with_name(f"{base.name}-{n}")


def _prepare(state: dict[str, Any], settings: dict[str, Any]) -> None:
    """The copy's state: the settings to set at the fork's start, and each checkpoint's
    bookkeeping emptied (its rotation must never remove a file of the parent's)."""
    controls = state.setdefault("controls", {})
    if isinstance(controls, dict):
        controls["forked"] = {**controls.get("forked", {}), **settings}
    for own in _checkpoint_bookkeeping(state):
        own.update(saved=[], best=None, best_file=None)


def _checkpoint_bookkeeping(state: Any) -> Iterator[dict[str, Any]]:
    if isinstance(state, dict):
        if "saved" in state and "best_file" in state:
            yield state
            return
        for value in state.values():
            yield from _checkpoint_bookkeeping(value)


def _first_summary(parent: Path, child: Path, lineage: dict[str, Any]) -> None:
    """A summary until the fork's run starts (its log then takes over): the parent's
    hyper-parameters, the fork's lineage, status ``forked``."""
    hparams = _summary(parent).get("hparams")
    fields = {
        "name": child.name,
        "status": "forked",
        "hparams": hparams if isinstance(hparams, dict) else {},
        "lineage": lineage,
    }
    (child / SUMMARY_FILE).write_bytes(msgspec.json.encode(fields))
