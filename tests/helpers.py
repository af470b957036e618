"""Small real training set-ups shared by the tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import evloop.callbacks as ecb
from evloop.recipe import Recipe


def make_batches(n: int = 20, batch_size: int = 8, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, 4, generator=generator),
            torch.randint(0, 3, (batch_size,), generator=generator),
        )
        for _ in range(n)
    ]


def linear_recipe(batches: list, lr: float = 0.1, **optimizer_kwargs) -> Recipe:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def forward(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward, batches)
    recipe.register("model", model)
    recipe.register("opt", opt)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt, **optimizer_kwargs)])
    return recipe


def loss_run(folder, scale: float = 1.0, steps: int = 30, sleep: float = 0.0) -> Recipe:
    """A recipe whose loss is ``scale / (1 + step)``, evaluated every 10 steps (loss
    ``scale / 4``), recording to ``folder/events.jsonl``; ``recipe.hparams['scale']``."""
    import time

    def forward(batch):
        time.sleep(sleep)
        return {"loss": torch.tensor(scale / (1 + batch))}

    tests = Recipe(lambda b: {"loss": torch.tensor(scale * 0.25)}, range(2))
    tests.callbacks.add_callback(ecb.Log("loss", "loss"))
    recipe = Recipe(forward, range(steps))
    recipe.hparams.update(scale=scale)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Log("loss", "loss"),
            ecb.CallRecipe(tests, 10),
            ecb.JsonlWriter(folder / "events.jsonl"),
        ]
    )
    return recipe


def wait_for(condition: Callable[[], Any], what: str = "a condition", timeout: float = 60.0) -> Any:
    """Poll ``condition`` until it returns something true (returned), at most
    ``timeout`` seconds; then an AssertionError saying what was waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.002)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def forkable_run(
    run_dir, total_epochs: int, seen: list | None = None, schedule: bool = False
) -> Recipe:
    """The run's own script: everything in ``run_dir``, continued with resume='auto';
    ``schedule``: its rate divided by 1 + the step, by an ``LRSched`` each batch."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    data = [torch.randn(8, 3) for _ in range(4)]

    def step(batch):
        if seen is not None:
            seen.append((recipe.progress.iters, opt.param_groups[0]["lr"], model.weight.clone()))
        loss = model(batch).pow(2).mean()
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(step, data)
    recipe.register("model", model)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.EpochMetricAvg("loss"),
            ecb.JsonlWriter(os.path.join(run_dir, "events.jsonl")),
            ecb.Checkpoint(
                os.path.join(run_dir, "checkpoints", "epoch_{epoch}.pth"), recipe, max_saves=2
            ),
        ]
    )
    if schedule:
        decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 / (1 + i))
        recipe.callbacks.add_callback(ecb.LRSched(decay, metric=None, step_each_batch=True))
    recipe.run(total_epochs=total_epochs, resume="auto")
    return recipe
