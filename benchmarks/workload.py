"""The benchmarks' workload: the data, the timed iteration over it, and the tutorial's
model and recipe (Linear 32->10, batch 64, SGD)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe

WARMUP = 300
Summary = list[tuple[str, str, str]]  # name, value, ratio: the table closing a report
SLOW_EVERY = 10
SLOW_SECONDS = 0.005


class TimedData:
    """The batches, with the time the steady state started and ended."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.batches = batches
        self.start = self.end = 0.0
        self.cpu_start = self.cpu_end = 0.0  # CPU time of the thread iterating

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Timestamps when the loop asks for batch WARMUP and for the last batch: some
        # engines never ask past the last one, so that is where the window ends.
        last = len(self.batches) - 1
        for i, batch in enumerate(self.batches):
            if i == WARMUP:
                self.start, self.cpu_start = time.perf_counter(), time.thread_time()
            elif i == last:
                self.end, self.cpu_end = time.perf_counter(), time.thread_time()
            yield batch

    def us_per_iter(self) -> float:
        return (self.end - self.start) / (len(self.batches) - 1 - WARMUP) * 1e6

    def cpu_us_per_iter(self) -> float:
        """The training thread's CPU time: what the loop itself costs, whatever else
        the machine does."""
        return (self.cpu_end - self.cpu_start) / (len(self.batches) - 1 - WARMUP) * 1e6


def make_data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(n)
    ]


def slow_log() -> None:
    time.sleep(SLOW_SECONDS)


def training_step(model: nn.Module) -> Callable[..., dict]:
    """The tutorial's forward pass (backward only: the Optimizer callback zeroes and
    steps)."""

    def forward(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    return forward


def tutorial_model() -> tuple[nn.Module, torch.optim.Optimizer, Callable[..., dict]]:
    """The bench model, its optimizer, and the tutorial's forward pass."""
    model = nn.Linear(32, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, opt, training_step(model)


def tutorial_recipe(data: Iterable, *callbacks: object) -> Recipe:
    """The bench model's recipe with Counter, Optimizer and ``callbacks``."""
    model, opt, forward = tutorial_model()
    recipe = Recipe(forward, data)
    recipe.register("model", model)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt), *callbacks])
    return recipe
