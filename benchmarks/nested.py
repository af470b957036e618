"""A nested run's cost: Torchélie's GAN pattern, the generator's step as ``G_loop.run(1)``
inside the discriminator's step, against both steps in one forward function."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from evloop import Recipe


class ThreadClock:
    """CPU time of the training thread over a run (wall clock moves with the machine's
    other work; this does much less)."""

    def on_run_start(self, state: dict) -> None:
        self.start = time.thread_time()

    def on_run_end(self, state: dict) -> None:
        self.seconds = time.thread_time() - self.start


def gan_like(nested: bool, iters: int) -> tuple[float, float]:
    """µs/iter (wall, training-thread CPU) of a two-model step (Torchélie's GAN
    pattern): the generator's step as a nested ``run(1)`` of a one-batch recipe, or
    both steps in one forward function."""
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(iters)
    ]
    clock = ThreadClock()
    start = time.perf_counter()
    gan_loop(batches, nested, clock)
    wall = time.perf_counter() - start
    return wall / iters * 1e6, clock.seconds / iters * 1e6


def gan_loop(data: Iterable[Any], nested: bool, *callbacks: object) -> None:
    """One epoch over ``data`` of the two-model step, nested or in one function."""
    g_model, d_model = nn.Linear(32, 10), nn.Linear(32, 10)
    g_opt = torch.optim.SGD(g_model.parameters(), lr=0.01)
    d_opt = torch.optim.SGD(d_model.parameters(), lr=0.01)
    current: list = []

    def g_step(_: object) -> None:
        x, y = current[0]
        g_opt.zero_grad()
        nn.functional.cross_entropy(g_model(x), y).backward()
        g_opt.step()

    def d_step(batch: tuple) -> None:
        x, y = batch
        d_opt.zero_grad()
        nn.functional.cross_entropy(d_model(x), y).backward()
        d_opt.step()

    g_loop = Recipe(g_step, range(1))

    def nested_step(batch: tuple) -> None:
        current[:] = [batch]
        g_loop.run(1)
        d_step(batch)

    def one_function(batch: tuple) -> None:
        current[:] = [batch]
        g_step(None)
        d_step(batch)

    recipe = Recipe(nested_step if nested else one_function, data)
    recipe.callbacks.add_callbacks(list(callbacks))
    recipe.run(1)


def spread(values: list[float], digits: int = 1) -> str:
    """Median and range of a measurement over rounds."""
    ordered = sorted(values)
    low, median, high = ordered[0], statistics.median(ordered), ordered[-1]
    return f"{median:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"


def nested_cost(rounds: int = 9, iters: int = 2000) -> dict[str, list[tuple[float, float]]]:
    """Both variants of :func:`gan_like`, interleaved over ``rounds``."""
    results: dict[str, list[tuple[float, float]]] = {"one function": [], "nested run(1)": []}
    for _ in range(rounds):
        results["one function"].append(gan_like(False, iters))
        results["nested run(1)"].append(gan_like(True, iters))
    return results
