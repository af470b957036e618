"""Callbacks: ordered-lane ones that act at exact points of a step, and the loggers.

Everything here is added with ``recipe.callbacks.add_callbacks([...])``; loggers are
subscribers and go to the async lane by themselves.
"""

from ..loggers import JsonlWriter, StdoutLogger
from .averages import EpochMetricAvg, ExponentialMetricAvg, WindowedMetricAvg
from .call_recipe import CallRecipe
from .checkpoint import Checkpoint
from .counter import Counter
from .early_stopping import EarlyStopping
from .log import Log
from .optimizer import LRSched, Optimizer
from .throughput import Throughput

__all__ = [
    "CallRecipe",
    "Checkpoint",
    "Counter",
    "EarlyStopping",
    "EpochMetricAvg",
    "ExponentialMetricAvg",
    "JsonlWriter",
    "LRSched",
    "Log",
    "Optimizer",
    "StdoutLogger",
    "Throughput",
    "WindowedMetricAvg",
]
