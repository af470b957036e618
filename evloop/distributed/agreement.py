"""Ranks agree, once at each run's start, on the callbacks that exchange data between
ranks — or the run fails at once, naming what differs, instead of hanging.

A callback whose class sets ``exchanges_between_ranks = True`` (metric averagers, an
inline evaluation, checkpoints, which gather every rank's RNG state) enters a
collective at some steps: every rank must have it, in the same order, or one rank
waits in a collective the others never enter. Torchélie's scripts often add loggers
and checkpoints on rank 0 only (``if rank == 0``): a :class:`Checkpoint` that rank 0
alone has gets a stand-in on the other ranks (same schedule; it writes nothing, only
takes part in the RNG gathering), so those scripts work as written; any other
difference is a :class:`RankMismatch` raised on every rank, within seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from . import world

if TYPE_CHECKING:
    from ..recipe import Recipe
    from .vote import StepVote

__all__ = ["RankMismatch", "agree_on_exchanges", "exchanges_between_ranks"]


class RankMismatch(RuntimeError):
    """Ranks have different callbacks that exchange data between ranks."""


class Entry(NamedTuple):
    """One such callback: where it is (``recipe`` path, phase, the one before it) and
    how rank 0's could be stood in for (a Checkpoint's schedule), else None."""

    recipe: str
    phase: int
    key: str
    after: str | None
    stand_in: dict[str, Any] | None


def exchanges_between_ranks(callback: Any) -> bool:
    """Whether ``callback`` takes part in collectives (its class says so)."""
    return bool(getattr(type(callback), "exchanges_between_ranks", False))


def agree_on_exchanges(recipe: Recipe, vote: StepVote) -> None:
    """On every rank at once, at a top-level run's start: compare each rank's
    exchanging callbacks with rank 0's; stand in for checkpoints rank 0 alone has, or
    raise :class:`RankMismatch` (on every rank) naming what differs and where."""
    everyone: list[list[Entry]] = vote.gather(_entries(recipe))
    reference = everyone[0]
    problems = []
    for rank, entries in enumerate(everyone[1:], start=1):
        if _ids(entries) != _ids(reference) and not _standable(entries, reference):
            problems += _differences(rank, entries, reference)
    if problems:
        raise RankMismatch(
            "the ranks disagree on callbacks that exchange data between ranks (each rank "
            "would wait for ever in a collective the others never enter): "
            + "; ".join(problems)
            + ". Add them on every rank: events and files come from rank 0 only."
        )
    own = everyone[world().rank]
    if _ids(own) != _ids(reference):
        _stand_in(recipe, reference, own)


def _differences(rank: int, entries: list[Entry], reference: list[Entry]) -> list[str]:
    theirs, ours = set(_ids(entries)), set(_ids(reference))
    found = [f"{_name(e)} is on rank {rank}, not on rank 0" for e in entries if _id(e) not in ours]
    found += [
        f"{_name(e)} is on rank 0, not on rank {rank}"
        for e in reference
        if _id(e) not in theirs and not _can_stand_in(e)  # a rank-0 checkpoint is fine
    ]
    return found or [f"they are in another order on rank {rank} than on rank 0"]


def _standable(entries: list[Entry], reference: list[Entry]) -> bool:
    """Whether ``entries`` is ``reference`` but for checkpoints we can stand in for."""
    own = set(_ids(entries))
    kept = [_id(e) for e in reference if _id(e) in own or not _can_stand_in(e)]
    return kept == _ids(entries)


def _can_stand_in(entry: Entry) -> bool:
    return entry.stand_in is not None and entry.recipe == ""


def _stand_in(recipe: Recipe, reference: list[Entry], own: list[Entry]) -> None:
    """Add the checkpoints of rank 0 this rank lacks, each where rank 0 has it among
    the exchanging callbacks."""
    from ..callbacks.checkpoint import Checkpoint

    have = {_id(e) for e in own}
    for entry in reference:
        if _id(entry) in have or entry.stand_in is None:
            continue  # _standable made sure that every other one is here
        phase = recipe.callbacks.cbs[entry.phase]
        keys = [getattr(cb, "state_key", None) for cb in phase]
        position = keys.index(entry.after) + 1 if entry.after in keys else 0
        phase.insert(position, Checkpoint(objects=recipe, **entry.stand_in))
        have.add(_id(entry))
    recipe.callbacks.refresh()


def _entries(recipe: Recipe, path: str = "") -> list[Entry]:
    """This rank's exchanging callbacks, in dispatch order, and those of the recipes
    registered in it (an evaluation's loop)."""
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for phase_index, phase in enumerate(recipe.callbacks.cbs):
        before: str | None = None
        for callback in phase:
            if exchanges_between_ranks(callback):
                key = str(getattr(callback, "state_key", type(callback).__name__))
                seen[key] = seen.get(key, 0) + 1
                if seen[key] > 1:  # the same callback twice: the second is its own
                    key = f"{key} (#{seen[key]})"
                entries.append(Entry(path, phase_index, key, before, _schedule(callback)))
                before = key
    for name in recipe.savable_names():
        nested = getattr(recipe, name)
        if hasattr(nested, "callbacks") and hasattr(nested, "savable_names"):
            entries += _entries(nested, f"{path}{name}.")
    return entries


def _schedule(callback: Any) -> dict[str, Any] | None:
    """What a stand-in needs to save at the same steps as ``callback`` (a plain
    :class:`Checkpoint`), else None."""
    from ..callbacks.checkpoint import Checkpoint

    if type(callback) is not Checkpoint:
        return None
    return {
        "filename_base": callback.filename_base,
        "every": callback.every,
        "evaluation": callback.evaluation,
        "monitor": callback.monitor,
        "mode": callback.mode,
    }


def _id(entry: Entry) -> tuple[str, str]:
    return entry.recipe, entry.key


def _ids(entries: list[Entry]) -> list[tuple[str, str]]:
    return [_id(e) for e in entries]


def _name(entry: Entry) -> str:
    return f"{entry.recipe}{entry.key}" if entry.recipe else entry.key
