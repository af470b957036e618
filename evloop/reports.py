"""Reports: HTML built on the consumer side from device tensors.

Report callbacks (confusion matrix, inspector, metrics table) post a :class:`Report`
into ``state['metrics']``: it holds the tensors of that step and renders HTML only
when a logger asks (``str(report)`` / ``report.render()``), so the training thread
never copies them to the host.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

import torch

from .figures import figure_image, is_figure

__all__ = ["Report", "escape", "png_bytes", "png_data_uri", "picture", "unit_range"]


class Report:
    """A lazily rendered HTML report; immutable once posted."""

    def __init__(self, render: Callable[..., str], *args: Any) -> None:
        self._render = render
        self._args = args
        self._html: str | None = None

    @property
    def args(self) -> tuple[Any, ...]:
        """What the renderer receives (the step's tensors among them)."""
        return self._args

    def with_args(self, *args: Any) -> Report:
        """The same report over other arguments (host copies of its tensors)."""
        return Report(self._render, *args)

    def render(self) -> str:
        if self._html is None:
            self._html = self._render(*self._args)
        return self._html

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"Report({getattr(self._render, '__name__', 'html')})"


def escape(text: Any) -> str:
    """HTML-escape a label or caption (class names come from users' data)."""
    return html.escape(str(text), quote=True)


def unit_range(images: torch.Tensor, force: bool = False) -> torch.Tensor:
    """``images`` min-max normalised over all their values when they leave [0, 1] (or
    always with ``force``: gray-level batches, heatmaps), else unchanged."""
    low, high = images.min(), images.max()
    if not force and low >= 0 and high <= 1:
        return images
    return (images - low) / (high - low).clamp(min=1e-8)


def png_bytes(image: torch.Tensor) -> bytes:
    """A CHW (or HW) image with values in [0, 1], as a PNG file's bytes."""
    from PIL import Image  # pillow comes with torchvision

    image = image.detach().float().cpu()
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.shape[0] not in (1, 3):
        image = image[:1]
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(image: torch.Tensor) -> str:
    """A ``data:`` URI of a CHW (or HW) image with values in [0, 1]."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


MAX_GRID = 16  # images shown from a batch


def picture(value: Any, dimensions: int) -> torch.Tensor:
    """The one CHW image (in [0, 1]) showing an image (3 dimensions), a batch of
    images (4: a grid of the first ``MAX_GRID``) or a heatmap (2); a matplotlib figure
    rendered."""
    if is_figure(value):
        return figure_image(value)
    tensor = torch.as_tensor(value).detach().cpu().float()
    if dimensions == 2:
        return unit_range(tensor, force=True)
    images = tensor[None] if dimensions == 3 else tensor[:MAX_GRID]
    images = unit_range(images, force=images.shape[1] == 1)
    from torchvision.utils import make_grid

    return make_grid(images, nrow=min(8, len(images)), padding=1)
