"""evloop: a PyTorch training engine on an in-process async event bus.

``evloop.recipes`` (Recipe …), ``evloop.callbacks`` (Counter, Optimizer, loggers …),
``evloop.events`` (typed events), ``evloop.bus`` (the async lane), ``evloop.optim``.
"""

from . import callbacks, events, optim, recipes
from .bus import Bus, Subscriber, Subscription
from .recipe import Recipe, RecipeBase
from .runner import CallbacksRunner
from .utils import send_to_device

__version__ = "0.1.0"

__all__ = [
    "Bus",
    "CallbacksRunner",
    "Recipe",
    "RecipeBase",
    "Subscriber",
    "Subscription",
    "callbacks",
    "events",
    "optim",
    "recipes",
    "send_to_device",
]
