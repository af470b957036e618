"""Metrics as terminal text: ``loss=0.4312 acc=0.9125 lr=3e-03 forward_time=8.7ms``.

Numbers get four significant digits (``190``, ``0.4312``, ``1.5e-05``); times
(``*_time``, seconds) and throughputs (``*_throughput``, samples per second) get
their units; text is cut to 20 characters; other kinds (images, vectors, reports)
are not shown.
"""

from __future__ import annotations

from typing import Any

from ..events import CommandApplied, scalar
from ..kinds import Kind, kind_in

__all__ = ["format_value", "format_metrics", "metrics_line", "command_line"]


def format_value(name: str, value: float | int | bool) -> str:
    if isinstance(value, bool) or isinstance(value, int) and not name.endswith("_time"):
        return str(value)
    if name.endswith("_time"):
        return f"{value * 1e3:.3g}ms" if abs(value) < 1 else f"{value:.3g}s"
    if name.endswith("throughput"):
        return _si(value) + "/s"
    return f"{value:.4g}"


def _si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def format_metrics(metrics: dict[str, Any], kinds: dict[str, str] | None = None) -> dict[str, str]:
    """The metrics a terminal can show, formatted, by name."""
    shown: dict[str, str] = {}
    for key, value in metrics.items():
        kind = kind_in(kinds or {}, key, value)
        if kind is Kind.TEXT:
            shown[key] = str(value)[:20]
        elif kind is Kind.SCALAR:
            number = scalar(value)
            if number is not None:
                shown[key] = format_value(key, number)
    return shown


def metrics_line(metrics: dict[str, Any], kinds: dict[str, str] | None = None) -> str:
    return " ".join(f"{k}={v}" for k, v in format_metrics(metrics, kinds).items())


def command_line(event: CommandApplied) -> str:
    """``set from ws 127.0.0.1:50112 after iteration 340: lr 0.01 → 0.0001``."""
    where = f" after iteration {event.iters}" if event.iters >= 0 else ""
    head = f"{event.op} from {event.client or 'python'}{where}"
    if not event.ok:
        return f"{head} failed: {event.error}"
    changes = ", ".join(
        f"{name} {_setting(name, old)} → {_setting(name, new)}"
        for name, (old, new) in event.changes.items()
    )
    return f"{head}: {changes or 'done'}"


def _setting(name: str, value: Any) -> str:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return format_value(name, value) if number else str(value)
