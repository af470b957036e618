"""Matplotlib figures as metrics: rendered to PNG by whoever shows them, never by
the training thread.

A step (or a callback) posts a ``matplotlib.figure.Figure`` as a metric, as
Torchélie's TensorBoard logger takes them; its kind is ``figure``. Loggers, the
event log and the dashboard render it in their own threads, once for all of them
(the rendering is kept with the figure until it changes), and show it as an image.
Like Torchélie's logger (TensorBoard's ``add_figure``), rendering closes the figure
in pyplot, so a figure made by ``plt.figure()`` at each step does not pile up there;
post a new figure each time rather than redrawing one while it is being shown.

evloop never imports matplotlib: a figure is known by its type's module, rendered by
its own ``savefig``.
"""

from __future__ import annotations

import io
import sys
import threading
import weakref
from typing import Any

import torch

__all__ = ["is_figure", "figure_png", "figure_image"]

_lock = threading.Lock()  # one rendering at a time: a figure is not thread-safe
_rendered: weakref.WeakKeyDictionary[Any, tuple[bytes, torch.Tensor]] = weakref.WeakKeyDictionary()


def is_figure(value: Any) -> bool:
    """Whether ``value`` is a matplotlib figure (without importing matplotlib)."""
    return any(
        cls.__name__ == "Figure" and cls.__module__ == "matplotlib.figure"
        for cls in type(value).__mro__
    )


def _render(figure: Any) -> tuple[bytes, torch.Tensor]:
    with _lock:
        known = _rendered.get(figure)
        if known is not None and not figure.stale:
            return known
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        png = buffer.getvalue()
        from PIL import Image  # pillow comes with torchvision

        with Image.open(io.BytesIO(png)) as decoded:
            rgb = decoded.convert("RGB")
        pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        image = pixels.reshape(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255
        _rendered[figure] = (png, image)
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(figure)
        return png, image


def figure_png(figure: Any) -> bytes:
    """The figure as PNG bytes."""
    return _render(figure)[0]


def figure_image(figure: Any) -> torch.Tensor:
    """The figure as a CHW RGB image with values in [0, 1]."""
    return _render(figure)[1]
