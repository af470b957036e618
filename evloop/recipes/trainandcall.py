"""Torchélie's module path ``recipes.trainandcall``."""

from .train_and_test import TrainAndCall

__all__ = ["TrainAndCall"]
