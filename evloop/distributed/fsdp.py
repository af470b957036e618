"""FSDP2 (``torch.distributed.fsdp.fully_shard``) as a plug-in part of a recipe
(``recipe.distributed(strategy='fsdp')``).

At a run's start each registered module with trainable parameters is sharded over
the ranks: first the blocks the user names (each one a unit gathered for its own
forward and backward), then the module itself. ``fully_shard`` replaces parameters
with sharded ones in place, so optimizers built before it — the usual order in a
recipe script — are pointed at the sharded parameters (they must not have stepped
yet: their state would be for whole tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from . import world
from .saving import optimizers_of
from .strategy import Strategy

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["FullyShard", "BlockPolicy"]

BlockPolicy = Callable[[torch.nn.Module], bool] | tuple[type[torch.nn.Module], ...] | None
"""Which submodules are sharded as units of their own: a predicate, module types, or
None (the whole module is one unit)."""


class FullyShard(Strategy):
    """Shards a recipe's registered modules with ``fully_shard(**options)``."""

    key = "fsdp"
    name = "the sharded module"

    def __init__(self, options: dict[str, Any], blocks: BlockPolicy = None) -> None:
        super().__init__(options)
        self.is_block = _block_predicate(blocks)

    def applied(self, module: torch.nn.Module) -> bool:
        from torch.distributed.fsdp import FSDPModule

        return isinstance(module, FSDPModule)

    def apply(self, recipe: Recipe, name: str, module: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        before = dict(module.named_parameters())
        mesh = self.options.get("mesh") or init_device_mesh(recipe.device.type, (world().size,))
        options = {**self.options, "mesh": mesh}
        for block in _blocks_bottom_up(module, self.is_block):
            fully_shard(block, **options)
        fully_shard(module, **options)
        after = dict(module.named_parameters())
        replaced = {id(before[n]): after[n] for n in before if after.get(n) is not before[n]}
        for optimizer in optimizers_of(recipe).values():
            _repoint(optimizer, replaced, name)
        return module


def _block_predicate(blocks: BlockPolicy) -> Callable[[torch.nn.Module], bool]:
    if blocks is None:
        return lambda module: False
    if isinstance(blocks, tuple):
        types = blocks
        return lambda module: isinstance(module, types)
    if callable(blocks):
        return blocks
    raise TypeError(f"blocks must be module types, a predicate or None, got {blocks!r}")


def _blocks_bottom_up(
    root: torch.nn.Module, is_block: Callable[[torch.nn.Module], bool]
) -> list[torch.nn.Module]:
    """The submodules to shard on their own, innermost first (``fully_shard`` wants
    children before their parents)."""
    found = [m for m in root.modules() if m is not root and is_block(m)]
    depth = {id(m): name.count(".") for name, m in root.named_modules()}
    return sorted(found, key=lambda m: -depth[id(m)])


def _repoint(optimizer: torch.optim.Optimizer, replaced: dict[int, Any], module: str) -> None:
    for group in optimizer.param_groups:
        params = group["params"]
        if not any(id(p) in replaced for p in params):
            continue
        if any(id(p) in replaced and optimizer.state.get(p) for p in params):
            raise RuntimeError(
                f"an optimizer over {module!r} has already stepped, so its state is for "
                f"whole tensors, not shards: shard before training (recipe.distributed("
                f"strategy='fsdp') before any run) or build the optimizer afterwards"
            )
        group["params"] = [replaced.get(id(p), p) for p in params]
