"""Async-lane consumers: they read events and never slow training.

The loggers of other tools (``VisdomLogger``, ``TensorBoardLogger``, ``MLflowLogger``,
``WandbLogger``) need their extra and are imported on first use, so that
``import evloop`` never imports them.
"""

import importlib
from typing import Any

from .jsonl import JsonlWriter
from .offload import Offload
from .progress import ProgressBar
from .stdout import StdoutLogger

__all__ = [
    "JsonlWriter",
    "MLflowLogger",
    "Offload",
    "ProgressBar",
    "StdoutLogger",
    "TensorBoardLogger",
    "TensorboardLogger",
    "VisdomLogger",
    "WandbLogger",
]

LAZY = {
    "VisdomLogger": "visdom",
    "TensorBoardLogger": "tensorboard",
    "TensorboardLogger": "tensorboard",
    "MLflowLogger": "mlflow",
    "WandbLogger": "wandb",
}


def __getattr__(name: str) -> Any:
    if name in LAZY:
        return getattr(importlib.import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(name)
