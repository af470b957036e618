"""Exact resume: random-number states and the loader's place in its epoch.

To continue an epoch at its next batch with the same order, the recipe keeps the RNG
states the loader drew its order from (taken at the epoch's start) and the states at
the time of the checkpoint. On resume the loader's iterator is rebuilt from the first,
the batches already done are skipped by index (a ``DataLoader`` over a map-style data
set loads none of them), and the second is put back before training goes on.
"""

from __future__ import annotations

import itertools
import random
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader

from .distributed import world

__all__ = [
    "ResumePoint",
    "rng_state",
    "set_rng_state",
    "loader_rng_state",
    "set_loader_rng_state",
    "iterate_from",
    "this_ranks_rng",
    "progress_from_counter",
    "loader_length",
    "generator_states",
    "set_generator_states",
]


@dataclass
class ResumePoint:
    """What an exact resume needs beside :class:`~evloop.context.Progress`: the RNG
    states a recipe's loader drew its order from, and those to put back.

    A recipe owns one; a loaded checkpoint fills it, the batch loop consumes
    ``rng`` and ``generators`` at the next run's start and refreshes ``epoch_rng`` at
    each epoch's start.
    """

    epoch_rng: dict[str, Any] | None = None
    """RNG states taken before the current epoch's loader iterator was made."""
    rng: dict[str, Any] | None = None
    """RNG states to restore at the next run's start (a loaded checkpoint's)."""
    generators: dict[str, Any] | None = None
    """The loader's own generators' states to restore before its next epoch."""

    @classmethod
    def split(cls, saved: dict[str, Any]) -> tuple[dict[str, Any], ResumePoint]:
        """A saved ``progress`` entry as its counters and its resume point (this
        rank's own RNG states when the checkpoint holds every rank's)."""
        counters = dict(saved)
        own_rng = this_ranks_rng(counters.pop("rng_by_rank", None))
        rank0_rng = counters.pop("rng", None)
        point = cls(
            epoch_rng=counters.pop("epoch_rng", None),
            rng=rank0_rng if own_rng is None else own_rng,
            generators=counters.pop("loader_rng", None),
        )
        return counters, point


def rng_state() -> dict[str, Any]:
    """Every global RNG state (torch CPU and CUDA, Python, NumPy if imported)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _python_state(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _python_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _generators(loader: Iterable[Any]) -> dict[str, torch.Generator]:
    found = {}
    if isinstance(getattr(loader, "generator", None), torch.Generator):
        found["loader"] = loader.generator  # type: ignore[attr-defined]
    sampler = getattr(loader, "sampler", None)
    if isinstance(getattr(sampler, "generator", None), torch.Generator):
        found["sampler"] = sampler.generator  # type: ignore[union-attr]
    return found


def loader_rng_state(loader: Iterable[Any]) -> dict[str, Any]:
    """What the loader will draw its order from: taken before its iterator is made."""
    state = {name: g.get_state() for name, g in _generators(loader).items()}
    state["torch"] = torch.get_rng_state()
    return state


def generator_states(loader: Iterable[Any]) -> dict[str, Any]:
    """The loader's and its sampler's own generators, as they are now (a seeded
    ``DataLoader(..., generator=g)`` draws each epoch's order from them)."""
    return {name: g.get_state() for name, g in _generators(loader).items()}


def set_generator_states(loader: Iterable[Any], states: dict[str, Any]) -> None:
    for name, generator in _generators(loader).items():
        if name in states:
            generator.set_state(states[name])


def set_loader_rng_state(loader: Iterable[Any], state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    for name, generator in _generators(loader).items():
        if name in state:
            generator.set_state(state[name])


class _SkipBatches(BatchSampler):
    """The same batches of indices as ``batch_sampler``, less the first ``skip``."""

    def __init__(self, batch_sampler: Iterable[list[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)  # type: ignore[arg-type]


def iterate_from(loader: Iterable[Any], skip: int) -> Iterator[Any]:
    """An iterator over ``loader`` that starts after its first ``skip`` batches."""
    if skip <= 0:
        return iter(loader)
    if isinstance(loader, DataLoader) and loader.batch_sampler is not None:
        kwargs: dict[str, Any] = {
            "batch_sampler": _SkipBatches(loader.batch_sampler, skip),
            "num_workers": loader.num_workers,
            "collate_fn": loader.collate_fn,
            "pin_memory": loader.pin_memory,
            "timeout": loader.timeout,
            "worker_init_fn": loader.worker_init_fn,
            "multiprocessing_context": loader.multiprocessing_context,
            "generator": loader.generator,
            "pin_memory_device": loader.pin_memory_device,
        }
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
        return iter(DataLoader(loader.dataset, **kwargs))
    return itertools.islice(iter(loader), skip, None)


def this_ranks_rng(by_rank: list[Any] | None) -> Any:
    """This rank's RNG states from a checkpoint's ``rng_by_rank``, or None (then
    rank 0's are used)."""
    if not by_rank:
        return None
    here = world()
    if len(by_rank) != here.size:
        warnings.warn(
            f"the checkpoint holds the RNG states of {len(by_rank)} ranks and this run has "
            f"{here.size}: every rank resumes with rank 0's",
            stacklevel=4,
        )
        return None
    return by_rank[here.rank]


def progress_from_counter(callbacks: Iterable[object], loader: Iterable[Any]) -> dict[str, Any]:
    """The progress of a checkpoint that saved none (Torchélie's): its Counter's."""
    counter: Any = next((cb for cb in callbacks if type(cb).__name__ == "Counter"), None)
    if counter is None or getattr(counter, "iters", -1) < 0:
        raise ValueError(
            "the state dict holds no progress (no 'progress', no Counter state): "
            "loading it would restart training from zero; add a Counter to the recipe "
            "that saved it, or load its modules alone with load_state_dict_forgiving"
        )
    done = counter.epoch_batch in (0, loader_length(loader))
    return {
        "epoch": counter.epoch,
        "iters": counter.iters,
        "epoch_batch": counter.epoch_batch,
        "epoch_done": done,
    }


def loader_length(loader: Iterable[Any]) -> int | None:
    """Batches per epoch, or None for a loader without a length."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
