"""Callbacks: ordered-lane ones that act at exact points of a step, and the loggers.

Everything here is added with ``recipe.callbacks.add_callbacks([...])``; loggers are
subscribers and go to the async lane by themselves.
"""

from typing import Any

from .. import loggers
from ..loggers import LAZY, JsonlWriter, Offload, ProgressBar, StdoutLogger
from .accuracy import AccAvg, TopkAccAvg
from .averages import EpochMetricAvg, ExponentialMetricAvg, WindowedMetricAvg
from .breakdown import StepBreakdown
from .call_recipe import CallRecipe
from .checkpoint import Checkpoint
from .counter import Counter
from .divergence import DivergenceGuard
from .early_stopping import EarlyStopping
from .log import Log
from .optimizer import LRSched, Optimizer
from .polyak import Polyak
from .pruning import OptunaPruning
from .ray_report import RayReport
from .reports import ClassificationInspector, ConfusionMatrix, ImageGradientVis, MetricsTable
from .sharded_checkpoint import ShardedCheckpoint
from .sync_check import SyncCheck
from .system import SystemMetrics
from .throughput import Throughput
from .torchmetric import TorchMetric
from .watchdog import Watchdog

__all__ = [
    "AccAvg",
    "CallRecipe",
    "ClassificationInspector",
    "ConfusionMatrix",
    "ImageGradientVis",
    "MetricsTable",
    "ProgressBar",
    "TopkAccAvg",
    "VisdomLogger",
    "Checkpoint",
    "ShardedCheckpoint",
    "SystemMetrics",
    "Counter",
    "DivergenceGuard",
    "EarlyStopping",
    "EpochMetricAvg",
    "ExponentialMetricAvg",
    "JsonlWriter",
    "LRSched",
    "Log",
    "Offload",
    "Optimizer",
    "OptunaPruning",
    "Polyak",
    "RayReport",
    "StdoutLogger",
    "StepBreakdown",
    "SyncCheck",
    "Throughput",
    "TorchMetric",
    "WindowedMetricAvg",
    "Watchdog",
    "TensorBoardLogger",
    "TensorboardLogger",
    "MLflowLogger",
    "WandbLogger",
]


def __getattr__(name: str) -> Any:
    if name in LAZY:  # imported on first use: each needs its extra
        return getattr(loggers, name)
    raise AttributeError(name)
