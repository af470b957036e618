"""Metric values as they travel: numbers, lists and HTML, built on the server side.

Numbers and one-element tensors become floats; strings and reports HTML; images
(3-D/4-D tensors) and heatmaps (2-D) become an HTML ``<img>`` with a PNG data URI, so
that every client — a browser, a remote StdoutLogger, JSONL writer or VisdomLogger —
can show them; small 1-D tensors become lists; anything else is left out.
"""

from __future__ import annotations

from typing import Any

import torch

from ..events import scalar
from ..reports import Report, png_data_uri, unit_range

__all__ = ["wire_value", "wire_metrics", "is_scalar"]

MAX_LIST = 4096
MAX_GRID = 16  # images shown from a batch


def _grid(images: torch.Tensor) -> torch.Tensor:
    images = images[:MAX_GRID].detach().float()
    images = unit_range(images, force=images.shape[1] == 1)
    from torchvision.utils import make_grid

    return make_grid(images, nrow=min(8, len(images)), padding=1)


def _image_html(image: torch.Tensor) -> str:
    style = "width:256px;max-width:100%;image-rendering:pixelated"
    return f'<img src="{png_data_uri(image)}" style="{style}">'


def wire_value(value: Any) -> Any:
    """The wire form of one metric value, or None to leave it out."""
    if isinstance(value, str):
        return value
    if isinstance(value, Report):
        return value.render()
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        value = value.detach().cpu()
        if value.dim() == 4:
            return _image_html(_grid(value))
        if value.dim() == 3:
            return _image_html(_grid(value[None]))
        if value.dim() == 2:
            return _image_html(unit_range(value.float(), force=True))
        if value.dim() == 1 and value.numel() <= MAX_LIST:
            return value.tolist()
        return None
    number = scalar(value)
    if number is not None:
        return float(number)
    return None


def wire_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    converted = {k: wire_value(v) for k, v in metrics.items()}
    return {k: v for k, v in converted.items() if v is not None}


def is_scalar(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)
