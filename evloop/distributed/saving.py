"""Whether a sharded save is taking the recipe's state: then the states that DCP
writes shard by shard (optimizers) are left out of the rest."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["saving_shards", "shards_saved_apart", "optimizers_of"]

_flag = threading.local()


def saving_shards() -> bool:
    return getattr(_flag, "on", False)


@contextlib.contextmanager
def shards_saved_apart() -> Iterator[None]:
    _flag.on = True
    try:
        yield
    finally:
        _flag.on = False


def optimizers_of(recipe: object) -> dict[str, torch.optim.Optimizer]:
    """The recipe's optimizers, once each: registered ones by their names, those only
    its callbacks hold (``Optimizer(opt)``) as ``callback<i>``."""
    found: dict[str, torch.optim.Optimizer] = {}
    seen: set[int] = set()
    candidates = [(n, getattr(recipe, n)) for n in recipe.savable_names()]  # type: ignore[attr-defined]
    callbacks = recipe.callbacks.callbacks()  # type: ignore[attr-defined]
    candidates += [(f"callback{i}", getattr(cb, "opt", None)) for i, cb in enumerate(callbacks)]
    for name, candidate in candidates:
        if isinstance(candidate, torch.optim.Optimizer) and id(candidate) not in seen:
            seen.add(id(candidate))
            found[name] = candidate
    return found
