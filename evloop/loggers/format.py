"""Metrics as terminal text: ``loss=0.4312 acc=0.9125 lr=3e-03 forward_time=8.7ms``.

Numbers get four significant digits (``190``, ``0.4312``, ``1.5e-05``); times
(``*_time``, seconds) and throughputs (``*_throughput``, samples per second) get
their units; text is cut to 20 characters; other kinds (images, vectors, reports)
are not shown. A series by parameter group with one value (``lr_0``, ``lr_1``) is
shown once (``lr=``).
"""

from __future__ import annotations

from typing import Any

from ..codec import scalar
from ..events import CommandApplied
from ..kinds import Kind, kind_in

__all__ = ["format_value", "format_metrics", "metrics_line", "collapse_series", "command_line"]


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


def _numbered(name: str) -> tuple[str, int] | None:
    """``('lr', 1)`` for ``lr_1``: one of a series by parameter group."""
    base, _, number = name.rpartition("_")
    return (base, int(number)) if base and number.isdigit() else None


def collapse_series(shown: dict[str, str]) -> dict[str, str]:
    """``lr_0=0.001 lr_1=0.001`` as ``lr=0.001``: a series by parameter group whose
    members all show the same value is shown once, under its base name."""
    series: dict[str, list[str]] = {}
    for name in shown:
        numbered = _numbered(name)
        if numbered is not None:
            series.setdefault(numbered[0], []).append(name)
    same = {
        base: names
        for base, names in series.items()
        if len(names) > 1 and len({shown[n] for n in names}) == 1 and base not in shown
    }
    collapsed: dict[str, str] = {}
    for name, text in shown.items():
        numbered = _numbered(name)
        if numbered is None or numbered[0] not in same:
            collapsed[name] = text
        elif name == same[numbered[0]][0]:
            collapsed[numbered[0]] = text
    return collapsed


def metrics_line(
    metrics: dict[str, Any],
    kinds: dict[str, str] | None = None,
    order: dict[str, int] | None = None,
) -> str:
    """``loss=0.4312 acc=0.9125 lr=0.001``; with ``order`` (a logger's, filled as new
    names appear), the names keep the place they first had from one line to the next."""
    shown = collapse_series(format_metrics(metrics, kinds))
    names = list(shown)
    if order is not None:
        for name in names:
            order.setdefault(name, len(order))
        names.sort(key=order.__getitem__)
    return " ".join(f"{name}={shown[name]}" for name in names)


def command_line(event: CommandApplied) -> str:
    """``set from 127.0.0.1:50112 after iteration 340: lr 0.01 → 0.0001``."""
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
