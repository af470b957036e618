"""Async-lane consumers: they read events and never slow training."""

from .jsonl import JsonlWriter
from .stdout import StdoutLogger

__all__ = ["JsonlWriter", "StdoutLogger"]
