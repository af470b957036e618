"""DistributedDataParallel as a plug-in part of a recipe (``recipe.distributed()``).

At the start of each top-level run the registered modules with trainable
parameters are wrapped (after the move to the recipe's device); after the run's
first step a guard checks that the forward function called the wrappers, since
gradients computed through a bare module are not synchronised across ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import world

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["DataParallel"]


class DataParallel:
    """Wraps a recipe's registered modules in ``DistributedDataParallel(**options)``."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.calls = 0  # forward calls through the wrappers, counted by a pre-hook

    def start(self, recipe: Recipe) -> Callable[[], None] | None:
        """Wrap what is not wrapped yet; returns the guard to run after the first step
        (None when nothing is wrapped or not distributed)."""
        if not world().distributed:
            return None
        wrapped = [self._wrap(recipe, name) for name in recipe.module_names()]
        present = [ddp for ddp in wrapped if ddp is not None]
        return self._guard(recipe, present, self.calls) if present else None

    def _wrap(self, recipe: Recipe, name: str) -> Any:
        from torch.nn.parallel import DistributedDataParallel

        module = getattr(recipe, name)
        if isinstance(module, DistributedDataParallel):
            return module
        if not any(p.requires_grad for p in module.parameters()):
            return None
        device_ids = [recipe.device] if recipe.device.type == "cuda" else None
        ddp = DistributedDataParallel(module, device_ids=device_ids, **self.options)
        ddp.register_forward_pre_hook(self._count_call)
        recipe.replace(name, ddp)
        return ddp

    def _count_call(self, *_: Any) -> None:
        self.calls += 1

    def _guard(self, recipe: Recipe, wrapped: list[Any], calls_before: int) -> Callable[[], None]:
        def check() -> None:
            has_grads = any(p.grad is not None for ddp in wrapped for p in ddp.parameters())
            if has_grads and self.calls == calls_before:
                name = getattr(recipe.call_fun, "__name__", "the forward function")
                raise RuntimeError(
                    f"{name} computed gradients without calling the DistributedDataParallel "
                    f"wrapper, so they are not synchronised across ranks: take the model by "
                    f"name (`def {name}(batch, model)`) or call `recipe.model` instead of a "
                    f"module captured before recipe.distributed()"
                )

        return check
