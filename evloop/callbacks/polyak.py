"""Polyak: an exponential moving average of a model's weights, on the device."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = ["Polyak"]


class Polyak:
    """After each batch, ``copy ← beta · copy + (1 - beta) · original`` for every
    floating-point parameter and buffer (torch's ``get_ema_multi_avg_fn``: one fused
    update on the device, no host sync); other buffers (counters) are copied. ``copy``
    starts as ``original``'s weights. Saved with the recipe, so a resumed run goes on
    averaging from the saved average. Torchélie's signature."""

    def __init__(self, original: torch.nn.Module, copy: torch.nn.Module, beta: float = 0.999):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.original, self.copy, self.beta = original, copy, beta
        self._average = get_ema_multi_avg_fn(beta)
        with torch.no_grad():
            copy.load_state_dict(original.state_dict(), strict=False)

    @property
    def state_key(self) -> str:
        return f"Polyak[{type(self.original).__name__}]"

    @torch.no_grad()
    def on_batch_end(self, state: dict[str, Any]) -> None:
        source, target = self.original.state_dict(), self.copy.state_dict()
        averaged = [name for name, value in target.items() if value.is_floating_point()]
        if averaged:
            self._average([target[n] for n in averaged], [source[n] for n in averaged], None)
        for name, value in target.items():
            if not value.is_floating_point():
                value.copy_(source[name])

    def state_dict(self) -> dict[str, Any]:
        return {"copy": self.copy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.copy.load_state_dict(state["copy"])
