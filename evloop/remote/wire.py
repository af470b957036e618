"""Metric values as they travel: numbers, lists and HTML, built on the server side.

Each value is converted by its kind (:mod:`evloop.kinds`): scalars become floats,
vectors lists (up to ``MAX_LIST`` numbers), text stays text, reports become HTML, and
images, image grids and heatmaps become an HTML ``<img>`` with a PNG data URI, so
that every client — a browser, a remote StdoutLogger, JSONL writer or VisdomLogger —
can show them. The kinds travel too: those of the wire values.
"""

from __future__ import annotations

from typing import Any

import torch

from ..codec import scalar
from ..kinds import DIMENSIONS, IMAGE_KINDS, Kind, kind_in
from ..reports import picture, png_data_uri

__all__ = ["wire_value", "wire_metrics"]

MAX_LIST = 4096


def _image_html(image: torch.Tensor) -> str:
    style = "width:256px;max-width:100%;image-rendering:pixelated"
    return f'<img src="{png_data_uri(image)}" style="{style}">'


def wire_value(value: Any, kind: Kind | None) -> tuple[Any, Kind] | None:
    """The wire form of one metric value and its kind, or None to leave it out."""
    if kind is Kind.SCALAR:
        number = scalar(value)
        return None if number is None else (float(number), kind)
    if kind is Kind.TEXT:
        return value, kind
    if kind is Kind.HTML:
        return (value if isinstance(value, str) else value.render()), kind
    if kind in IMAGE_KINDS:
        return _image_html(picture(value, DIMENSIONS[kind])), Kind.HTML
    if kind is Kind.VECTOR:
        vector = torch.as_tensor(value).detach().cpu()
        return (vector.tolist(), kind) if vector.numel() <= MAX_LIST else None
    return None  # custom (visdom-only) values, or none


def wire_metrics(
    metrics: dict[str, Any], kinds: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Metrics and their kinds in wire form."""
    values: dict[str, Any] = {}
    wire_kinds: dict[str, str] = {}
    for key, value in metrics.items():
        converted = wire_value(value, kind_in(kinds, key, value))
        if converted is not None:
            values[key], wire_kinds[key] = converted
    return values, wire_kinds
