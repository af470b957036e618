"""Checkpoints saved by Torchélie, loaded into the matching evloop recipe.

Torchélie names a callback's saved state ``<Class>_<phase>_<n>`` (``Counter_prologue_0``,
``Optimizer_middle_0``) and saves no progress of its own: the counters are the
``Counter``'s. The model and the optimizer load as they are; the counters become the
recipe's progress; a callback whose saved state evloop cannot read is named in a
warning, and one that training cannot go on without (optimizer, counters) is an error.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from typing import Any

__all__ = ["is_torchelie_callbacks", "load_torchelie_callbacks", "TORCHELIE_KEY"]

TORCHELIE_KEY = re.compile(r"^(\w+)_(prologue|middle|epilogue)_(\d+)$")
PHASES = ("prologue", "middle", "epilogue")
ESSENTIAL = ("Counter", "Optimizer")  # a resume without them silently restarts


def is_torchelie_callbacks(saved: dict[str, Any]) -> bool:
    return bool(saved) and all(TORCHELIE_KEY.match(key) for key in saved)


def torchelie_names(cbs: list[list[Any]]) -> dict[str, Any]:
    """The callbacks by the names Torchélie gives their saved states."""
    named = {}
    for phase, callbacks in zip(PHASES, cbs, strict=True):
        counts: dict[str, int] = defaultdict(int)
        for cb in callbacks:
            kind = type(cb).__name__
            named[f"{kind}_{phase}_{counts[kind]}"] = cb
            counts[kind] += 1
    return named


def load_torchelie_callbacks(cbs: list[list[Any]], saved: dict[str, Any]) -> None:
    ours = torchelie_names(cbs)
    unread = []
    for key, state in saved.items():
        cb = ours.get(key)
        if cb is None or not callable(getattr(cb, "load_state_dict", None)):
            unread.append(f"{key} (no such callback here)")
            continue
        try:
            cb.load_state_dict(state)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if type(cb).__name__ in ESSENTIAL:
                raise ValueError(
                    f"this Torchélie checkpoint's {key} cannot be loaded into "
                    f"{type(cb).__name__}: {error!r}; training would not resume where it "
                    "stopped"
                ) from error
            unread.append(f"{key} ({error!r})")
    missing = [name for name in ESSENTIAL if not any(k.startswith(name + "_") for k in saved)]
    if unread:
        warnings.warn(
            "a Torchélie checkpoint was loaded; these callbacks' states were not, and "
            f"they start afresh: {', '.join(unread)}",
            stacklevel=4,
        )
    if "Optimizer" in missing and any(type(cb).__name__ == "Optimizer" for cb in ours.values()):
        warnings.warn(
            "the Torchélie checkpoint holds no Optimizer state: the optimizer starts afresh",
            stacklevel=4,
        )
