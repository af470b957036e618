"""What the ``evloop`` command prints when a command ends: a profile's summary, and
one line for what went wrong outside this process (never a traceback)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["profile_summary", "failed", "connection_failure"]


def profile_summary(report: Any) -> str:
    """A profile's report as ``evloop ctl`` prints it: the trace, then the top operators."""
    head = f"evloop ctl: profiled iterations {report.first}-{report.last} on rank {report.rank}"
    lines = [f"{head}: trace {report.path} (in the run folder)"]
    if report.error:
        lines.append(f"  note: {report.error}")
    if report.step_s is not None:
        lines.append(f"  {report.step_s * 1e3:.1f} ms per step (profiled)")
    if report.breakdown:
        parts = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in report.breakdown.items())
        lines.append(f"  breakdown: {parts}")
    for op in report.top[:10]:
        lines.append(f"  {op['self_s'] * 1e3:9.2f} ms self  {op['calls']:6d} calls  {op['name']}")
    return "\n".join(lines)


def failed(command: str, reason: str) -> int:
    """One line on stderr, exit status 1: never a traceback for what went wrong
    outside this process."""
    print(f"evloop {command}: {' '.join(reason.split())}", file=sys.stderr)
    return 1


def connection_failure(url: str, error: Exception) -> str:
    """Why a connection to ``url`` did not get through, in words."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from .remote.client import NotAServer, unreachable

    if isinstance(error, InvalidStatus):
        response = error.response
        body = response.body.decode(errors="replace").strip()[:200]
        return f"{url} refused the connection: HTTP {response.status_code} {body}"
    if isinstance(error, ConnectionClosed):
        closed = error.rcvd
        why = f"{closed.code} {closed.reason}".strip() if closed else "without a close frame"
        return f"{url} closed the connection: {why}"
    if isinstance(error, NotAServer):
        return str(error)
    if isinstance(error, OSError):
        return unreachable(url, error)
    return f"{url}: {type(error).__name__}: {error}"
