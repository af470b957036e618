"""Several runs' series on one shared x grid, small enough for a page to draw at once.

Over the full-resolution columns: when the points in view are more than asked for,
the x range is cut into equal buckets and each run gets the mean, minimum and maximum
of its points in each (an empty bucket is a gap); otherwise the points themselves, on
the union of their x. Every run shares the x values, so a chart overlays any number of
runs without aligning them in the page.
"""

from __future__ import annotations

from typing import Any

import torch

from .runlog import Column

__all__ = ["AXES", "STATS", "overlay", "series_of"]

AXES = ("step", "epoch", "time")
STATS = ("mean", "min", "max")


def series_of(
    column: Column, axis: str, batches_per_epoch: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The column's finite points as (x, y) tensors, x on ``axis``: steps, epochs done
    (fractional; steps when the epoch length is unknown), or seconds since the run
    started. Made once per length of the column (a finished run's: once)."""
    key = (len(column), batches_per_epoch)
    cached = column.views.get(axis)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    values = _tensor(column.values)
    if axis == "time":
        x = _tensor(column.times)
    else:
        x = _tensor(column.steps).to(torch.float64)
        if axis == "epoch" and batches_per_epoch:
            x = (x + 1) / batches_per_epoch
    finite = torch.isfinite(values) & torch.isfinite(x)
    if not bool(finite.all()):  # a diverged value is a gap; a point without a time is
        x, values = x[finite], values[finite]  # off the wall-time axis
    column.views[axis] = (key, x, values)
    return x, values


def _tensor(values: Any) -> torch.Tensor:
    if not len(values):
        return torch.zeros(0, dtype=torch.float64)
    kind = torch.float64 if values.typecode == "d" else torch.int64
    return torch.frombuffer(values, dtype=kind).clone()  # a copy: the array grows


def overlay(
    runs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    points: int,
    x0: float | None = None,
    x1: float | None = None,
    stats: tuple[str, ...] = STATS,
) -> dict[str, Any]:
    """``runs``: name → (x, y), float64, finite, x ascending (:func:`series_of`).
    The result: ``{"x": [...], "bucketed": bool, "runs": {name: {"mean": [...],
    "min": [...], "max": [...]}}}`` (the ``stats`` asked for), NaN (``null`` in
    JSON) for an empty bucket; only the points with ``x0 <= x <= x1`` (when given)."""
    kept = {name: _in_view(x, y, x0, x1) for name, (x, y) in runs.items()}
    if sum(len(x) for x, _ in kept.values()) <= points:
        return _exact(kept, stats)
    lows = [x[0].item() for x, _ in kept.values() if len(x)]
    highs = [x[-1].item() for x, _ in kept.values() if len(x)]
    lo = x0 if x0 is not None else min(lows)
    hi = x1 if x1 is not None else max(highs)
    width = (hi - lo) / points if hi > lo else 1.0
    grid = lo + (torch.arange(points, dtype=torch.float64) + 0.5) * width
    return {
        "x": grid.tolist(),
        "bucketed": True,
        "runs": {name: _buckets(x, y, lo, width, points, stats) for name, (x, y) in kept.items()},
    }


def _in_view(
    x: torch.Tensor, y: torch.Tensor, x0: float | None, x1: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    start = int(torch.searchsorted(x, x0)) if x0 is not None else 0
    stop = int(torch.searchsorted(x, x1, right=True)) if x1 is not None else len(x)
    return x[start:stop], y[start:stop]


def _buckets(
    x: torch.Tensor, y: torch.Tensor, lo: float, width: float, points: int, stats: tuple[str, ...]
) -> dict:
    # x ascends: each bucket is a slice of it
    edges = lo + torch.arange(1, points, dtype=torch.float64) * width
    bounds = torch.cat([torch.zeros(1, dtype=torch.int64), torch.searchsorted(x, edges)])
    lengths = torch.diff(bounds, append=torch.tensor([len(x)]))
    empty = lengths == 0
    shown = {}
    for name in stats:
        values = torch.segment_reduce(y, name, lengths=lengths, unsafe=True)
        shown[name] = _gaps(values.masked_fill_(empty, torch.nan))
    return shown


def _exact(kept: dict[str, tuple[torch.Tensor, torch.Tensor]], stats: tuple[str, ...]) -> dict:
    xs = [x for x, _ in kept.values() if len(x)]
    union = torch.unique(torch.cat(xs)) if xs else torch.zeros(0, dtype=torch.float64)
    shown: dict[str, Any] = {}
    for name, (x, y) in kept.items():
        values = torch.full((len(union),), torch.nan, dtype=torch.float64)
        values[torch.searchsorted(union, x)] = y
        same = _gaps(values)
        shown[name] = dict.fromkeys(stats, same)
    return {"x": union.tolist(), "bucketed": False, "runs": shown}


def _gaps(values: torch.Tensor) -> list[float]:
    return values.tolist()  # NaN for a gap: null in JSON (msgspec), a gap in the chart
