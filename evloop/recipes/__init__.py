"""Recipes: the base :class:`Recipe` and the predefined ones."""

from ..recipe import Recipe, RecipeBase

__all__ = ["Recipe", "RecipeBase"]
