"""Recipes: the base :class:`Recipe` and the predefined ones."""

from ..recipe import Recipe, RecipeBase
from .classification import Classification, CrossEntropyClassification
from .gan import GANRecipe
from .train_and_test import TrainAndCall, TrainAndTest

__all__ = [
    "Classification",
    "CrossEntropyClassification",
    "GANRecipe",
    "Recipe",
    "RecipeBase",
    "TrainAndCall",
    "TrainAndTest",
]
