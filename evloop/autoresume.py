"""``recipe.run(..., resume='auto')``: a run restarted with the same command (a
requeued job, ``torchrun --max-restarts``) continues from the newest complete
checkpoint its own ``Checkpoint`` or ``ShardedCheckpoint`` wrote.

Rank 0 looks at what the recipe's checkpoint callbacks would write (the files and
folders their names can format to), newest first, and takes the first that verifies:
a file's SHA-256 digest or every record's CRC-32; a sharded save's completeness, its
recipe state's CRCs and every shard file its metadata names, at its full length.
Corrupt and partial ones are skipped, each with the reason. Every rank then loads
that one (a sharded save on any world size). One line says what was loaded, or that
nothing was found.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from .checkpoint_io import CHECKSUM_SUFFIX, TMP_SUFFIX, load
from .distributed import all_gather_objects, world

if TYPE_CHECKING:
    from .recipe import Recipe

__all__ = ["resume_auto", "RESUME_CHOICES"]

RESUME_CHOICES = (None, "auto")


class Candidate(NamedTuple):
    path: str
    sharded: bool
    mtime: float


class Choice(NamedTuple):
    """Rank 0's answer, handed to every rank: the path to load (None: nothing), whether
    it is a sharded save, and the lines to print."""

    path: str | None
    sharded: bool
    lines: list[str]
    error: str | None = None


def resume_auto(recipe: Recipe) -> str | None:
    """Load the newest complete checkpoint of ``recipe``'s checkpoint callbacks, on
    every rank (a collective in a distributed run); returns its path, or None."""
    here = world()
    if recipe.progress.iters >= 0:  # trained or loaded in this process: that is newer
        return recipe.resumed_from
    state = None
    choice = Choice(None, False, [])
    if here.is_main:
        choice, state = _choose(recipe)
    choice = all_gather_objects(choice)[0]
    if choice.error is not None:
        raise ValueError(choice.error)
    lines = list(choice.lines)
    if choice.path is not None:
        _load(recipe, choice, state)
        progress = recipe.progress
        lines.append(
            f"resumed from {choice.path} (epoch {progress.epoch}, iteration {progress.iters})"
        )
    if here.is_main:
        for line in lines:
            print(f"evloop: {line}", file=sys.stderr, flush=True)
    recipe.resumed_from = choice.path
    return choice.path


def _choose(recipe: Recipe) -> tuple[Choice, Any]:
    """On rank 0: the newest checkpoint that verifies, the skipped ones' reasons, and
    the state of a single-file checkpoint (loaded while verifying it)."""
    from .callbacks.sharded_checkpoint import ShardedCheckpoint

    checkpoints = _checkpoints_of(recipe)
    if not checkpoints:
        return Choice(None, False, [], _NO_CHECKPOINT), None
    candidates = []
    for checkpoint in checkpoints:
        sharded = isinstance(checkpoint, ShardedCheckpoint)
        candidates += _candidates(checkpoint.filename_base, sharded)
    lines: list[str] = []
    for candidate in sorted(candidates, key=lambda c: c.mtime, reverse=True):
        problem, state = _verify(candidate)
        if problem is None:
            return Choice(candidate.path, candidate.sharded, lines), state
        lines.append(f"resume='auto' skipped {candidate.path}: {problem}")
    names = ", ".join(sorted({_glob_of(c.filename_base) for c in checkpoints}))
    lines.append(f"resume='auto': no complete checkpoint found ({names}): training from the start")
    return Choice(None, False, lines), None


_NO_CHECKPOINT = (
    "resume='auto' continues from the checkpoints the recipe writes: add a "
    "Checkpoint(..., recipe) or ShardedCheckpoint(..., recipe) to its callbacks"
)


def _checkpoints_of(recipe: Recipe, holder: Any = None) -> list[Any]:
    """The checkpoint callbacks that save ``recipe`` itself, its own and those of the
    recipes registered in it (a GAN's evaluation saves the whole recipe); one that
    saves a module alone holds no progress to continue from."""
    from .callbacks.checkpoint import Checkpoint

    holder = recipe if holder is None else holder
    found = [
        cb
        for cb in holder.callbacks.callbacks()
        if isinstance(cb, Checkpoint) and cb.objects is recipe
    ]
    for name in holder.savable_names():
        nested = getattr(holder, name, None)
        if (
            nested is not holder
            and hasattr(nested, "callbacks")
            and hasattr(nested, "savable_names")
        ):
            found += _checkpoints_of(recipe, nested)
    return found


def _glob_of(filename_base: str) -> str:
    from .callbacks._checkpoint_writer import glob_of

    return glob_of(filename_base)


def _candidates(filename_base: str, sharded: bool) -> list[Candidate]:
    from .callbacks._checkpoint_writer import best_path
    from .distributed.checkpoint import PARTIAL

    pattern = _glob_of(filename_base)
    best = best_path(pattern)
    found = []
    for path in glob.glob(pattern):
        if path.endswith((TMP_SUFFIX, CHECKSUM_SUFFIX, PARTIAL)) or fnmatch.fnmatch(path, best):
            continue  # a write under way, a digest, or a copy of another file
        if os.path.isdir(path) != sharded:
            continue
        try:
            found.append(Candidate(path, sharded, os.path.getmtime(path)))
        except OSError:  # removed meanwhile (a rotation)
            continue
    return found


def _verify(candidate: Candidate) -> tuple[str | None, Any]:
    """Why ``candidate`` cannot be resumed from (None: it can), and the state of a
    single file."""
    if candidate.sharded:
        from .distributed.checkpoint import sharded_problem

        return sharded_problem(candidate.path), None
    try:
        state = load(candidate.path)
    except Exception as error:  # torn, truncated, foreign: said, and the next one tried
        return _plain(error), None
    if not isinstance(state, dict) or "progress" not in state:
        return "it holds no recipe state (no progress)", None
    return None, state


def _plain(error: BaseException) -> str:
    """The first line of what went wrong (torch's unpickling errors run to pages)."""
    text = str(error).strip().splitlines()
    first = text[0] if text else repr(error)
    if len(first) > 200:
        first = first[:200] + "…"
    return first if isinstance(error, ValueError) else f"{type(error).__name__}: {first}"


def _load(recipe: Recipe, choice: Choice, state: Any) -> None:
    """Every rank loads the chosen checkpoint; a rank that cannot fails every rank."""
    assert choice.path is not None
    if choice.sharded:
        from .distributed.checkpoint import load_sharded

        load_sharded(recipe, choice.path)
        return
    problem = None
    if state is None:
        try:
            state = load(choice.path)
        except Exception as error:  # this rank cannot read what rank 0 chose
            problem = _plain(error)
    problems = all_gather_objects(problem)
    failed = [f"rank {rank}: {text}" for rank, text in enumerate(problems) if text]
    if failed:
        raise RuntimeError(
            f"resume='auto' chose {choice.path} on rank 0, and not every rank can load it "
            f"(checkpoints must be on a file system every node sees): {'; '.join(failed)}"
        )
    recipe.load_state_dict(state)
