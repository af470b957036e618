"""evloop: a PyTorch training engine on an in-process async event bus.

The names users need: :class:`Recipe` (and Torchélie's :class:`RecipeBase`),
:class:`Subscriber` (the base of async-lane consumers), and the packages
``evloop.recipes`` (ready-made recipes), ``evloop.callbacks`` (ordered callbacks and
loggers), ``evloop.events`` (the typed events), ``evloop.context`` (the running run, for
callbacks), ``evloop.optim`` and ``evloop.utils`` (Torchélie's helpers, such as
``send_to_device``).

They are imported on first use: ``import evloop`` alone does not import torch, so the
``evloop`` command (``ctl``, ``attach``, ``serve``) starts at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Recipe",
    "RecipeBase",
    "Subscriber",
    "callbacks",
    "context",
    "events",
    "optim",
    "recipes",
    "utils",
]

if TYPE_CHECKING:
    from . import callbacks, context, events, optim, recipes, utils
    from .recipe import Recipe, RecipeBase
    from .subscription import Subscriber

_HOME = {"Recipe": ".recipe", "RecipeBase": ".recipe", "Subscriber": ".subscription"}
_PACKAGES = {"callbacks", "context", "events", "optim", "recipes", "utils"}


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
