"""Recipes: the base :class:`Recipe` and the predefined ones."""

from ..recipe import Recipe, RecipeBase
from .train_and_test import TrainAndCall, TrainAndTest

__all__ = ["Recipe", "RecipeBase", "TrainAndCall", "TrainAndTest"]
