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

from typing import TYPE_CHECKING

from ._lazy import lazy_names

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

__getattr__ = lazy_names(
    __name__,
    {
        "Recipe": ".recipe",
        "RecipeBase": ".recipe",
        "Subscriber": ".subscription",
        **dict.fromkeys(("callbacks", "context", "events", "optim", "recipes", "utils"), ""),
    },
)
