"""What ``Recipe.compile`` does: the forward function (and the optimizers' steps)
compiled separately, or the whole step captured as one graph."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .captured_step import WholeStep
from .utils import compiled_step

if TYPE_CHECKING:
    from .recipe import Recipe

__all__ = ["compile_recipe"]


def compile_recipe(recipe: Recipe, whole_step: bool, shapes: int, options: dict[str, Any]) -> None:
    """Replace ``recipe.call_fun`` by its compiled form (see :meth:`Recipe.compile`);
    compiling again starts from the eager function, not from the compiled one."""
    eager = getattr(recipe.call_fun, "_torchdynamo_orig_callable", recipe.call_fun)
    eager = getattr(eager, "__wrapped__", eager) if isinstance(eager, WholeStep) else eager
    if whole_step:
        recipe.call_fun = WholeStep(recipe, eager, options, shapes)
        return
    recipe.call_fun = compiled_step(eager, options)
    for callback in recipe.callbacks.callbacks():
        compile_step = getattr(callback, "compile_step", None)
        if callable(compile_step):
            compile_step(**options)
