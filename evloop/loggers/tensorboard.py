"""TensorBoardLogger: metrics, images and reports as TensorBoard event files; and
Torchélie's ``TensorboardLogger``, with its name and signature.

Needs ``pip install 'evloop[tensorboard]'``.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

import torch

from ..events import EpochEnded, RunStarted
from ..figures import figure_image
from ..kinds import Kind
from ..reports import unit_range
from .tracking import TrackingLogger

__all__ = ["TensorBoardLogger", "TensorboardLogger", "MISSING"]

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
"""``TensorboardLogger``'s default ``log_dir``: TensorBoard's own, ``runs/<time>_<host>``."""


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
        elif kind is Kind.FIGURE:  # rendered here, in the logger's thread
            writer.add_image(name, figure_image(value), step)
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


def default_log_dir() -> str:
    """Where ``SummaryWriter()`` writes without a ``log_dir``: ``runs/<time>_<host>``."""
    stamp = datetime.datetime.now().strftime("%b%d_%H-%M-%S")
    return os.path.join("runs", f"{stamp}_{socket.gethostname()}")


class TensorboardLogger(TensorBoardLogger):
    """Torchélie's ``TensorboardLogger(log_dir=MISSING, log_every=10, prefix='',
    post_epoch_ends=True)``: ``log_dir`` defaults to TensorBoard's ``runs/<time>_<host>``
    and ``None`` turns it off (it receives nothing and needs no TensorBoard); metrics are
    named ``prefix + key`` (evaluation results ``<prefix><eval>_<key>``, as the
    ``VisdomLogger`` names its windows); epoch ends are logged when ``post_epoch_ends``.
    Scalars, text and reports, images, image grids, heatmaps and matplotlib figures
    (rendered in the logger's thread) are logged as :class:`TensorBoardLogger` logs
    them."""

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = MISSING,
        log_every: int = 10,
        prefix: str = "",
        post_epoch_ends: bool = True,
    ) -> None:
        self.prefix = prefix
        self.post_epoch_ends = post_epoch_ends
        if log_dir is None:  # off, as in Torchélie
            TrackingLogger.__init__(self, log_every)
            self.log_dir = ""
            self._writer = None
            self.types = ()
            return
        super().__init__(default_log_dir() if log_dir is MISSING else log_dir, log_every)
        if not post_epoch_ends:
            self.types = tuple(t for t in self.types or () if t is not EpochEnded)

    @property
    def name(self) -> str:
        return f"TensorboardLogger[{self.log_dir}:{self.prefix}]"

    def metric_name(self, source: str, key: str) -> str:
        if source == "train":
            return f"{self.prefix}{key}"
        return f"{self.prefix}{source}_{key}"
