"""Small real training set-ups shared by the tests."""

from __future__ import annotations

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
