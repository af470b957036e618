"""Where a process's threads are: every thread's stack, the training thread's first.

Read from another thread (a watchdog, a grace-period timer) while the training thread
may be stuck: ``sys._current_frames`` takes each thread's frame at that instant,
without stopping or entering it.
"""

from __future__ import annotations

import sys
import threading
import traceback
from types import FrameType

__all__ = ["thread_stacks", "innermost"]


def _names() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if t.ident is not None}


def thread_stacks(first: int | None, leave_out: int | None = None) -> str:
    """Every thread's stack, as tracebacks print them (innermost call last), the thread
    ``first`` (an ident) first; ``leave_out``: a thread not to show (the caller)."""
    frames = sys._current_frames()
    names = _names()
    order = sorted(frames, key=lambda ident: (ident != first, names.get(ident, "")))
    parts = []
    for ident in order:
        if ident == leave_out:
            continue
        label = "training thread" if ident == first else "thread"
        stack = "".join(traceback.format_stack(frames[ident]))
        parts.append(f'{label} "{names.get(ident, ident)}":\n{stack}')
    return "\n".join(parts)


def innermost(thread: int | None) -> str:
    """The innermost call of ``thread`` now: ``function (file:line): source``, or ""
    when the thread is gone."""
    frame: FrameType | None = sys._current_frames().get(thread) if thread is not None else None
    if frame is None:
        return ""
    summary = traceback.extract_stack(frame, limit=1)[-1]
    source = f": {summary.line.strip()}" if summary.line else ""
    return f"{summary.name} ({summary.filename}:{summary.lineno}){source}"
