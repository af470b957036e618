"""TensorBoardLogger: metrics, images and reports as TensorBoard event files.

Needs ``pip install 'evloop[tensorboard]'``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..events import RunStarted
from ..kinds import Kind
from ..reports import unit_range
from .tracking import TrackingLogger

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(TrackingLogger):
    """Writes ``log_dir`` with ``torch.utils.tensorboard.SummaryWriter``: scalars
    (``train/loss``, ``test/acc`` …, the iteration as step), images and image grids,
    heatmaps as images, reports and text as text. ``tensorboard --logdir`` shows it."""

    def __init__(self, log_dir: str | os.PathLike[str], log_every: int = 10) -> None:
        from torch.utils.tensorboard import SummaryWriter  # fails here without the extra

        super().__init__(log_every)
        self.log_dir = os.fspath(log_dir)
        self._writer_class = SummaryWriter
        self._writer: Any = None

    @property
    def name(self) -> str:
        return f"TensorBoardLogger[{self.log_dir}]"

    def _ensure(self) -> Any:
        if self._writer is None:
            self._writer = self._writer_class(self.log_dir)
        return self._writer

    def open(self, event: RunStarted) -> None:
        if event.hparams:  # shown in TensorBoard's Text tab
            rows = "\n".join(f"| {k} | {v} |" for k, v in event.hparams.items())
            self._ensure().add_text("hparams", "| name | value |\n|---|---|\n" + rows, 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        writer = self._ensure()
        for name, value in values.items():
            writer.add_scalar(name, value, step)

    def media(self, step: int, name: str, kind: Kind, value: Any) -> None:
        writer = self._ensure()
        if kind in (Kind.HTML, Kind.TEXT):
            writer.add_text(name, str(value), step)
        elif kind is Kind.IMAGES:
            images = torch.as_tensor(value).detach().float()
            writer.add_images(name, unit_range(images, force=images.shape[1] == 1), step)
        elif kind is Kind.IMAGE:
            image = torch.as_tensor(value).detach().float()
            writer.add_image(name, unit_range(image[None], force=image.shape[0] == 1)[0], step)
        elif kind is Kind.HEATMAP:
            heat = unit_range(torch.as_tensor(value).detach().float(), force=True)
            writer.add_image(name, heat[None], step)
        elif kind is Kind.VECTOR:
            writer.add_histogram(name, torch.as_tensor(value).detach().float(), step)

    def write(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, status: str) -> None:
        if self._writer is not None:
            self._writer.add_text("run/status", status)
            self._writer.close()
            self._writer = None
