"""DistributedDataParallel as a plug-in part of a recipe (``recipe.distributed()``).

At the start of each top-level run the registered modules with trainable
parameters are wrapped (after the move to the recipe's device); after the run's
first step a guard checks that the forward function called the wrappers, since
gradients computed through a bare module are not synchronised across ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .strategy import Strategy

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["DataParallel"]


class DataParallel(Strategy):
    """Wraps a recipe's registered modules in ``DistributedDataParallel(**options)``."""

    key = "ddp"
    name = "the DistributedDataParallel wrapper"

    def applied(self, module: torch.nn.Module) -> bool:
        return isinstance(module, torch.nn.parallel.DistributedDataParallel)

    def apply(self, recipe: Recipe, name: str, module: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [recipe.device] if recipe.device.type == "cuda" else None
        ddp = DistributedDataParallel(module, device_ids=device_ids, **self.options)
        recipe.replace(name, ddp)
        return ddp
