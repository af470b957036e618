"""Choosing a recipe's distributed plug-in from ``recipe.distributed()``'s arguments."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from . import world
from .ddp import DataParallel
from .fsdp import BlockPolicy, FullyShard
from .strategy import Strategy

__all__ = ["STRATEGIES", "strategy_for", "warn_without_sampler"]

STRATEGIES = ("ddp", "fsdp", "none")


def strategy_for(
    strategy: str, ddp: bool, blocks: BlockPolicy, options: dict[str, Any]
) -> Strategy | None:
    """The plug-in that spreads the modules over ranks (None: leave them alone); a
    ValueError names a wrong choice."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    if blocks is not None and strategy != "fsdp":
        raise ValueError("blocks= is an FSDP option: pass strategy='fsdp'")
    if strategy == "fsdp":
        return FullyShard(dict(options), blocks)
    if strategy == "ddp" and ddp:
        return DataParallel(dict(options))
    return None


def warn_without_sampler(loader: Any) -> None:
    """Warn when a distributed run's loader would give every rank the whole data set."""
    sampler = getattr(loader, "sampler", None)
    if world().distributed and not isinstance(
        sampler, torch.utils.data.distributed.DistributedSampler
    ):
        warnings.warn(
            "the recipe's loader has no DistributedSampler: every rank trains on the "
            "whole data set",
            stacklevel=3,
        )
