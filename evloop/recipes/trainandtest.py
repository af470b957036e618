"""Torchélie's module path ``recipes.trainandtest``."""

from .train_and_test import TrainAndTest

__all__ = ["TrainAndTest"]
