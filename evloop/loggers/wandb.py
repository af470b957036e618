"""WandbLogger: metrics and media in a Weights & Biases run (online or offline).

Needs ``pip install 'evloop[wandb]'``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..events import RunStarted
from ..figures import figure_image
from ..kinds import Kind
from ..reports import unit_range
from .tracking import TrackingLogger

__all__ = ["WandbLogger"]


class WandbLogger(TrackingLogger):
    """``wandb.init(project=..., **init)`` at the first run start (``mode='offline'``
    writes the run under ``dir`` without a network), ``run.log`` with the iteration
    as the ``iteration`` axis (evaluations come after later training steps), images
    as ``wandb.Image``, reports as ``wandb.Html``; the run finishes with exit code 0
    (or 1 when it failed)."""

    def __init__(self, project: str = "evloop", log_every: int = 10, **init: Any) -> None:
        import wandb  # fails here without the extra

        super().__init__(log_every)
        self.project, self.init = project, init
        self._wandb = wandb
        self.run: Any = None
        self._rows: dict[int, dict[str, Any]] = {}

    @property
    def name(self) -> str:
        return f"WandbLogger[{self.project}]"

    def open(self, event: RunStarted) -> None:
        config = {**event.hparams, **self.init.get("config", {})}
        self.run = self._wandb.init(project=self.project, **{**self.init, "config": config})
        # evaluations arrive after later training steps: the x axis is a metric
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._rows.setdefault(step, {}).update(values)

    def media(self, step: int, name: str, kind: Kind, value: Any) -> None:
        wandb = self._wandb
        if kind is Kind.HTML:
            shown: Any = wandb.Html(str(value))
        elif kind in (Kind.IMAGE, Kind.IMAGES, Kind.HEATMAP, Kind.FIGURE):
            if kind is Kind.FIGURE:
                value, kind = figure_image(value), Kind.IMAGE
            images = torch.as_tensor(value).detach().float()
            if kind is Kind.HEATMAP:
                images = images[None, None]
            elif kind is Kind.IMAGE:
                images = images[None]
            images = unit_range(images, force=images.shape[1] == 1)
            shown = [wandb.Image(image) for image in images[:16]]
        else:
            return
        self._rows.setdefault(step, {})[name] = shown

    def write(self) -> None:
        if self.run is None:
            return
        for step in sorted(self._rows):
            self.run.log({**self._rows[step], "iteration": step})
        self._rows = {}

    def close(self, status: str) -> None:
        if self.run is not None:
            self.write()
            self.run.summary["status"] = status
            self.run.finish(exit_code=1 if status == "failed" else 0)
            self.run = None
