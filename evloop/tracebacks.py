"""Errors leaving ``run()`` / ``arun()`` with the training engine's frames taken out.

An error raised in the user's step reaches the caller through evloop's loop, its
training thread, anyio and asyncio: some 40 frames between the ``recipe.run()`` line
and the line that raised. They are removed from the traceback (and from those of
its cause and context), and a note says how many were hidden. ``EVLOOP_TRACEBACK=full``
keeps every frame (for a bug in evloop itself).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import types

import anyio

__all__ = ["trimmed", "is_engine_file"]

ENV = "EVLOOP_TRACEBACK"


def _folder(module: types.ModuleType) -> str:
    return os.path.dirname(os.path.abspath(module.__file__ or "")) + os.sep


EVLOOP_FOLDER = os.path.dirname(os.path.abspath(__file__)) + os.sep
ENGINE_FOLDERS = (EVLOOP_FOLDER, *(_folder(m) for m in (anyio, asyncio, concurrent.futures)))
ENGINE_FILES = frozenset(os.path.abspath(m.__file__ or "") for m in (threading, contextlib))
_TRIMMED = "__evloop_trimmed__"


def is_engine_file(filename: str) -> bool:
    """Whether frames of this file belong to the engine (evloop, its event loop)."""
    path = os.path.abspath(filename)
    return path in ENGINE_FILES or path.startswith(ENGINE_FOLDERS)


def _without_engine(tb: types.TracebackType | None) -> tuple[types.TracebackType | None, int]:
    kept: list[types.TracebackType] = []
    hidden = 0
    while tb is not None:
        if is_engine_file(tb.tb_frame.f_code.co_filename):
            hidden += 1
        else:
            kept.append(tb)
        tb = tb.tb_next
    rebuilt: types.TracebackType | None = None
    for entry in reversed(kept):
        rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return rebuilt, hidden


def trimmed(error: BaseException) -> BaseException:
    """``error`` (returned for ``raise``) with the engine's frames removed from its
    traceback and those of the errors it chains to; once per error."""
    if os.environ.get(ENV) == "full" or getattr(error, _TRIMMED, False):
        return error
    hidden, seen = 0, set()
    todo = [error]
    while todo:
        chained = todo.pop()
        if id(chained) in seen:
            continue
        seen.add(id(chained))
        tb, count = _without_engine(chained.__traceback__)
        chained.__traceback__ = tb
        hidden += count
        todo += [e for e in (chained.__cause__, chained.__context__) if e is not None]
    with contextlib.suppress(AttributeError, TypeError):  # some built-ins refuse attributes
        setattr(error, _TRIMMED, True)
    if hidden:
        error.add_note(
            f"({hidden} frames of evloop's training engine (its loop, thread, anyio, "
            f"asyncio) are hidden from this traceback; {ENV}=full shows them)"
        )
    return error
