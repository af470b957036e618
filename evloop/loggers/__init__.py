"""Async-lane consumers: they read events and never slow training.

``VisdomLogger`` lives in :mod:`evloop.loggers.visdom` (it needs the visdom extra) and
is imported on first use, so that ``import evloop`` never imports visdom.
"""

from typing import Any

from .jsonl import JsonlWriter
from .progress import ProgressBar
from .stdout import StdoutLogger

__all__ = ["JsonlWriter", "ProgressBar", "StdoutLogger", "VisdomLogger"]


def __getattr__(name: str) -> Any:
    if name == "VisdomLogger":
        from .visdom import VisdomLogger

        return VisdomLogger
    raise AttributeError(name)
