"""The demo job: a small CNN on the 8x8 digits, with the tutorial's callbacks."""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from . import callbacks as ecb
from .datasets import Digits
from .optim import RAdamW
from .recipe import Recipe

__all__ = ["small_cnn", "run_demo"]


def small_cnn(num_classes: int = 10, channels: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


@torch.no_grad()
def _accuracy(model: nn.Module, loader: torch.utils.data.DataLoader, device: str) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
        total += len(y)
    model.train()
    return correct / total


def run_demo(epochs: int = 5, run_dir: str = "runs/demo") -> float:
    """Train, log to stdout and ``run_dir/events.jsonl``; returns the test accuracy."""
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train = torch.utils.data.DataLoader(Digits(train=True), batch_size=32, shuffle=True)
    test = torch.utils.data.DataLoader(Digits(train=False), batch_size=256)
    model = small_cnn()
    opt = RAdamW(model.parameters(), lr=3e-3)

    def forward_pass(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward_pass, train)
    recipe.register("model", model)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt, log_lr=True),
            ecb.EpochMetricAvg("loss"),
            ecb.Throughput(),
            ecb.StdoutLogger(log_every=20),
            ecb.JsonlWriter(os.path.join(run_dir, "events.jsonl")),
        ]
    )
    recipe.to(device)
    start = time.perf_counter()
    recipe.run(epochs)
    accuracy = _accuracy(model, test, device)
    print(
        f"test accuracy {accuracy:.4f} after {epochs} epochs "
        f"in {time.perf_counter() - start:.1f} s on {device}; events in {run_dir}"
    )
    return accuracy
