"""Learning-rate schedules Torchélie's users import (``evloop.lr_scheduler``)."""

from __future__ import annotations

import math

import torch

__all__ = ["CosineDecay"]


class CosineDecay(torch.optim.lr_scheduler.LambdaLR):
    """Torchélie's schedule, per step: a half-cosine warm-up from 0 over
    ``warmup_ratio × total_iters`` steps, then a cosine decay to 0 at ``total_iters``
    (each group's learning rate times that factor). Step it after each optimizer step
    (``LRSched(sched, step_each_batch=True)``).

    Past ``total_iters`` the cosine goes on, as Torchélie's: the rate climbs back to
    its peak over as many steps again (a run of one epoch more than planned trains its
    last epoch with rising rates instead of a rate held at 0)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        warmup_ratio: float = 0.05,
        last_epoch: int = -1,
    ) -> None:
        if total_iters < 1:
            raise ValueError(f"total_iters must be at least 1, got {total_iters}")
        self.total_iters = total_iters
        self.warmup_ratio = warmup_ratio
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        warmup = int(self.warmup_ratio * self.total_iters)
        if step < warmup:
            return 0.5 * (1 - math.cos(step / warmup * math.pi))
        progress = (step - warmup) / max(1, self.total_iters - warmup)
        return 0.5 * (math.cos(progress * math.pi) + 1)
