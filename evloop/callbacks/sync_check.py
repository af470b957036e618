"""SyncCheck: name every host↔device sync the training thread makes in steady state."""

from __future__ import annotations

import sys
import threading
import traceback
import warnings
from types import CodeType, FrameType
from typing import Any

import torch

from .. import context
from ..context import RunContext
from ..events import SyncDetected

__all__ = ["SyncCheck", "SYNC_WARNING"]

SYNC_WARNING = "called a synchronizing CUDA operation"


class SyncCheck:
    """After ``after`` steps (the first ones may sync legitimately: allocation, cuDNN
    autotuning), turns on ``torch.cuda.set_sync_debug_mode(mode)`` and reports each
    sync the training thread makes as a :class:`~evloop.events.SyncDetected` event
    naming the callback (``ConfusionMatrix.on_batch_end``) or the forward function that
    caused it, with its stack; ``StdoutLogger`` prints them. Syncs of other threads
    (loggers, evaluations) are not the training thread's and are left alone.

    ``mode='warn'`` (each sync site reported once per run); ``'error'``: torch raises
    at the first sync, and the run fails with its traceback. Off (and free) on a
    machine without CUDA.
    """

    def __init__(self, mode: str = "warn", after: int = 3) -> None:
        if mode not in ("warn", "error"):
            raise ValueError(f"mode must be 'warn' or 'error', got {mode!r}")
        self.mode, self.after = mode, after
        self.detected: list[SyncDetected] = []
        self._run: RunContext | None = None
        self._thread = 0
        self._first = 0
        self._sites: set[tuple[str, int]] = set()
        self._culprits: dict[CodeType, str] = {}
        self._shown: Any = None
        self._filters: list[Any] = []

    def on_run_start(self, state: dict[str, Any]) -> None:
        self._run = context.current()
        self._thread = threading.get_ident()
        self._first = self._run.progress.iters + 1
        self._culprits = _culprits(self._run.recipe)

    def on_batch_start(self, state: dict[str, Any]) -> None:
        assert self._run is not None
        if self._shown is None and self._run.progress.iters - self._first >= self.after:
            self._arm()

    def on_run_end(self, state: dict[str, Any]) -> None:
        if self._shown is not None:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = self._shown
            warnings.filters[:] = self._filters  # type: ignore[index]
            self._shown = None

    def _arm(self) -> None:
        self._shown = warnings.showwarning
        self._filters = list(warnings.filters)
        warnings.showwarning = self._seen  # type: ignore[assignment]
        warnings.filterwarnings("always", message=f".*{SYNC_WARNING}")
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode(self.mode)

    def _seen(self, message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
        if SYNC_WARNING not in str(message) or threading.get_ident() != self._thread:
            self._shown(message, category, filename, lineno, *rest)
            return
        frame: FrameType | None = sys._getframe(1)
        culprit, stack = self._culprit(frame)
        site = (filename, lineno)
        if site in self._sites or self._run is None:
            return
        self._sites.add(site)
        event = SyncDetected(
            culprit=culprit, iters=self._run.progress.iters, message=str(message), stack=stack
        )
        self.detected.append(event)
        self._run.publish(event)

    def _culprit(self, frame: FrameType | None) -> tuple[str, str]:
        """The innermost callback hook or forward function on the stack, and the
        stack from there on."""
        stack = traceback.format_stack(frame)
        while frame is not None:
            name = self._culprits.get(frame.f_code)
            if name is not None:
                return name, "".join(stack[-12:])
            frame = frame.f_back
        return "the training step", "".join(stack[-12:])


def _culprits(recipe: Any) -> dict[CodeType, str]:
    """What may cause a sync: each callback's hooks and the forward function."""
    named: dict[CodeType, str] = {}
    for callback in recipe.callbacks.callbacks():
        for attribute in dir(type(callback)):
            if attribute.startswith("on_"):
                code = getattr(getattr(callback, attribute), "__code__", None)
                if code is not None:
                    named[code] = f"{type(callback).__name__}.{attribute}"
    code = getattr(recipe.call_fun, "__code__", None)
    if code is not None:
        named[code] = f"the forward function {recipe.call_fun.__name__}"
    return named
