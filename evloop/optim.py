"""Optimizers: Torchélie's names over torch's implementations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["RAdamW"]


class RAdamW(torch.optim.RAdam):
    """RAdam with decoupled (AdamW-style) weight decay: torch's ``RAdam`` with
    ``decoupled_weight_decay=True`` and Torchélie's default ``weight_decay=1e-2``."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=True,
        )
