"""What data-parallel strategies share: applied once per registered module at a run's
start, and a guard that stops a forward function which bypasses what was applied."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from . import world

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["Strategy"]


class Strategy:
    """A way to spread the registered modules over ranks (subclasses: DDP, FSDP2)."""

    key = ""
    name = "a data-parallel wrapper"

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.calls = 0  # forward calls through what was applied, counted by a pre-hook

    def start(self, recipe: Recipe) -> Callable[[], None] | None:
        """Apply to what is not applied yet; returns the guard to run after the first
        step (None when nothing is applied or not distributed)."""
        if not world().distributed:
            return None
        applied = [self._apply_to(recipe, name) for name in recipe.module_names()]
        present = [module for module in applied if module is not None]
        return self._guard(recipe, present, self.calls) if present else None

    def _apply_to(self, recipe: Recipe, name: str) -> torch.nn.Module | None:
        module = getattr(recipe, name)
        if self.applied(module):
            return module
        if not any(p.requires_grad for p in module.parameters()):
            return None
        wrapped = self.apply(recipe, name, module)
        wrapped.register_forward_pre_hook(self._count_call)
        return wrapped

    def applied(self, module: torch.nn.Module) -> bool:
        raise NotImplementedError

    def apply(self, recipe: Recipe, name: str, module: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def _count_call(self, *_: Any) -> None:
        self.calls += 1

    def _guard(
        self, recipe: Recipe, wrapped: list[torch.nn.Module], calls_before: int
    ) -> Callable[[], None]:
        def check() -> None:
            has_grads = any(p.grad is not None for m in wrapped for p in m.parameters())
            if has_grads and self.calls == calls_before:
                name = getattr(recipe.call_fun, "__name__", "the forward function")
                raise RuntimeError(
                    f"{name} computed gradients without calling {self.name}, so they are "
                    f"not synchronised across ranks: take the model by name "
                    f"(`def {name}(batch, model)`) or call `recipe.model` instead of a "
                    f"module captured before recipe.distributed()"
                )

        return check
