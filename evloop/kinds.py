"""Metric kinds: what a posted value is, decided once and carried by the events.

``scalar``
    a number, or a tensor or NumPy value with one element: a point on a chart.
``vector``
    a 1-D tensor (more than one element): a list, a histogram.
``heatmap``
    a 2-D tensor.
``image``
    a 3-D tensor ``(C, H, W)``.
``images``
    a 4-D tensor ``(N, C, H, W)``: a grid.
``html``
    a report (:class:`evloop.reports.Report`), or HTML already rendered for the wire.
``text``
    a string.
``figure``
    a matplotlib figure, rendered to PNG by whoever shows it (:mod:`evloop.figures`),
    never by the training thread; shown as an image.
``custom``
    an object that draws itself in visdom (``to_visdom(vis, window)``).

Events that carry metrics carry their kinds (``event.kinds``); every logger, the wire
and the dashboard render by kind. A value of no kind is named in one warning and
skipped everywhere.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from .figures import is_figure
from .reports import Report

__all__ = ["Kind", "kind_of", "kinds_of", "kind_in"]

log = logging.getLogger("evloop")


class Kind(enum.StrEnum):
    SCALAR = "scalar"
    VECTOR = "vector"
    HEATMAP = "heatmap"
    IMAGE = "image"
    IMAGES = "images"
    HTML = "html"
    TEXT = "text"
    FIGURE = "figure"
    CUSTOM = "custom"


BY_DIMENSIONS = {1: Kind.VECTOR, 2: Kind.HEATMAP, 3: Kind.IMAGE, 4: Kind.IMAGES}
DIMENSIONS = {kind: dimensions for dimensions, kind in BY_DIMENSIONS.items()}
DIMENSIONS[Kind.FIGURE] = 3  # rendered, it is one image
IMAGE_KINDS = frozenset({Kind.HEATMAP, Kind.IMAGE, Kind.IMAGES, Kind.FIGURE})
_warned: set[str] = set()


def kind_of(value: Any) -> Kind | None:
    """The kind of one value, or None when it has none."""
    if isinstance(value, bool | int | float):
        return Kind.SCALAR
    if isinstance(value, str):
        return Kind.TEXT
    if isinstance(value, Report):
        return Kind.HTML
    if is_figure(value):
        return Kind.FIGURE
    if hasattr(value, "to_visdom"):
        return Kind.CUSTOM
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # tensors, NumPy arrays and scalars
        numel = 1
        for size in shape:
            numel *= size
        return Kind.SCALAR if numel == 1 else BY_DIMENSIONS.get(len(shape))
    return None


def kinds_of(metrics: dict[str, Any]) -> dict[str, str]:
    """The kind of each metric; a metric of no kind is left out (and named once)."""
    kinds: dict[str, str] = {}
    for key, value in metrics.items():
        kind = kind_of(value)
        if kind is not None:
            kinds[key] = kind
        elif key not in _warned:
            _warned.add(key)
            log.warning(
                "metric %r is a %s, which no logger can show (numbers, tensors, strings, "
                "reports and matplotlib figures can be): it is skipped",
                key,
                type(value).__name__,
            )
    return kinds


def kind_in(kinds: dict[str, str], key: str, value: Any) -> Kind | None:
    """The kind an event recorded for ``key``, else that of ``value`` (events built
    by hand may carry no kinds)."""
    recorded = kinds.get(key)
    return Kind(recorded) if recorded is not None else kind_of(value)
