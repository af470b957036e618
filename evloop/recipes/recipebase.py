"""Torchélie's module path ``recipes.recipebase``: the same objects as :mod:`evloop.recipe`."""

from ..recipe import Recipe, RecipeBase
from ..runner import CallbacksRunner

__all__ = ["CallbacksRunner", "Recipe", "RecipeBase"]
