"""The demo job: CrossEntropyClassification on an embedded data set.

Default: scikit-learn's 8×8 handwritten digits (1,797 real scans that ship inside the
scikit-learn package: no download, trains in seconds on two CPU cores) with a small
CNN. ``--dataset cifar10 --data-dir DIR``: ResNet-18 on CIFAR-10 through torchvision's
loader, where the data is present (or can be downloaded).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch
from torch import nn

from . import callbacks as ecb
from .checkpoint_io import load_latest
from .datasets import Digits
from .recipes import CrossEntropyClassification

__all__ = ["small_cnn", "run_demo", "cifar10_loaders"]


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


Loaders = tuple[torch.utils.data.DataLoader[Any], torch.utils.data.DataLoader[Any], list[str]]


def digits_loaders(batch_size: int = 32) -> Loaders:
    train = torch.utils.data.DataLoader(Digits(train=True), batch_size=batch_size, shuffle=True)
    test = torch.utils.data.DataLoader(Digits(train=False), batch_size=256)
    return train, test, Digits.classes


def cifar10_loaders(data_dir: str, batch_size: int = 128) -> Loaders:
    """CIFAR-10 from ``data_dir`` (downloaded there when missing and possible)."""
    import torchvision
    from torchvision import transforms as T

    normalize = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    train_tf = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
    )
    test_tf = T.Compose([T.ToTensor(), normalize])
    try:
        train = torchvision.datasets.CIFAR10(
            data_dir, train=True, transform=train_tf, download=True
        )
        test = torchvision.datasets.CIFAR10(data_dir, train=False, transform=test_tf, download=True)
    except Exception as error:  # offline, no space, a partial file…
        raise SystemExit(
            f"evloop demo: CIFAR-10 is not in {data_dir!r} and could not be downloaded "
            f"({error}).\nPut torchvision's CIFAR-10 there first: download "
            f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
            f"extract it into {data_dir!r} (it creates cifar-10-batches-py/), then run "
            f"again; or run `evloop demo` for the embedded digits data set."
        ) from None
    workers = min(4, os.cpu_count() or 1)
    return (
        torch.utils.data.DataLoader(
            train, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=True
        ),
        torch.utils.data.DataLoader(test, batch_size=512, num_workers=workers, pin_memory=True),
        train.classes,
    )


def run_demo(
    epochs: int = 5,
    run_dir: str | None = None,
    dataset: str = "digits",
    data_dir: str = "data",
    serve: bool = False,
) -> float:
    """Train, log (progress bar, stdout, events.jsonl) and checkpoint in ``run_dir``;
    returns the final test accuracy."""
    import torchvision

    torch.manual_seed(0)
    run_dir = run_dir or os.path.join("runs", time.strftime(f"{dataset}-%Y%m%d-%H%M%S"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dataset == "digits":
        train, test, classes = digits_loaders()
        model, lr, log_every = small_cnn(len(classes)), 3e-3, 20
    elif dataset == "cifar10":
        train, test, classes = cifar10_loaders(data_dir)
        model, lr, log_every = torchvision.models.resnet18(num_classes=10), 1e-3, 100
    else:
        raise SystemExit(f"evloop demo: unknown data set {dataset!r} (digits, cifar10)")
    n_iters = epochs * len(train)
    recipe = CrossEntropyClassification(
        model,
        train,
        test,
        classes,
        lr=lr,
        n_iters=n_iters,
        test_every=len(train),
        log_every=log_every,
        checkpoint=os.path.join(run_dir, "checkpoints"),
    )
    recipe.callbacks.add_callbacks(
        [
            ecb.ProgressBar(),
            ecb.JsonlWriter(os.path.join(run_dir, "events.jsonl")),
        ]
    )
    recipe.to(device)
    if serve:
        recipe.serve()  # prints the dashboard's URL
    images = len(train.dataset)  # type: ignore[arg-type]
    print(
        f"evloop demo: {dataset}, {images} training images, {epochs} epochs "
        f"on {device}; run folder {run_dir}",
        flush=True,
    )
    start = time.perf_counter()
    state = recipe.run(total_epochs=epochs)
    took = time.perf_counter() - start
    accuracy = float(state["test_metrics"]["acc"])
    best = load_latest(os.path.join(run_dir, "checkpoints", "*_best.pth"))
    print(
        f"evloop demo: test accuracy {accuracy:.4f} after {epochs} epochs in {took:.1f} s; "
        f"best checkpoint {best[0] if best else 'none'}",
        file=sys.stdout,
        flush=True,
    )
    return accuracy
