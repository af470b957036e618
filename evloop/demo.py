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

import msgspec
import torch
from torch import nn

from . import callbacks as ecb
from .checkpoint_io import load_latest
from .datasets import Digits
from .loggers.summary import SUMMARY_FILE
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


def fresh_run_dir(run_dir: str | None, dataset: str) -> str:
    """Where a new run goes: ``run_dir``, or a new folder inside it when it already
    holds a run (two runs never mix their logs), or ``runs/<dataset>-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if run_dir is None:
        return os.path.join("runs", f"{dataset}-{stamp}")
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        inside = os.path.join(run_dir, stamp)
        print(
            f"evloop demo: {run_dir} already holds a run: this one goes to {inside} "
            f"(`--resume {run_dir}` continues that run instead)",
            flush=True,
        )
        return inside
    return run_dir


DEFAULT_EPOCHS = {"digits": 5, "cifar10": 30}


def epochs_asked(run_dir: str) -> int | None:
    """The epochs a run of the demo was asked for (its summary's hyper-parameters)."""
    try:
        with open(os.path.join(run_dir, SUMMARY_FILE), "rb") as file:
            asked = msgspec.json.decode(file.read()).get("hparams", {}).get("epochs")
    except (OSError, msgspec.DecodeError, AttributeError):
        return None
    return asked if isinstance(asked, int) and asked > 0 else None


def run_demo(
    epochs: int | None = None,
    run_dir: str | None = None,
    dataset: str = "digits",
    data_dir: str = "data",
    serve: bool = False,
    resume: str | None = None,
    keep_serving: bool = False,
) -> float | None:
    """Train, log (progress bar, stdout, events.jsonl) and checkpoint in the run
    folder; returns the final test accuracy, or None when interrupted (Ctrl-C; how to
    resume is printed). ``resume``: continue the run of that folder from its latest
    checkpoint, up to ``epochs`` epochs in all (default: what that run was asked).
    With ``keep_serving`` the dashboard stays up after training until Ctrl-C."""
    import torchvision

    torch.manual_seed(0)
    run_dir = resume if resume is not None else fresh_run_dir(run_dir, dataset)
    if epochs is None:
        asked = epochs_asked(resume) if resume is not None else None
        epochs = asked or DEFAULT_EPOCHS.get(dataset, 5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dataset == "digits":
        train, test, classes = digits_loaders()
        model, lr, log_every = small_cnn(len(classes)), 3e-3, 20
    elif dataset == "cifar10":
        train, test, classes = cifar10_loaders(data_dir)
        model, lr, log_every = torchvision.models.resnet18(num_classes=10), 1e-3, 100
    else:
        raise SystemExit(f"evloop demo: unknown data set {dataset!r} (digits, cifar10)")
    checkpoints = os.path.join(run_dir, "checkpoints")
    recipe = CrossEntropyClassification(
        model,
        train,
        test,
        classes,
        lr=lr,
        n_iters=epochs * len(train),
        test_every="epoch",
        log_every=log_every,
        checkpoint=checkpoints,
    )
    recipe.callbacks.add_callbacks(
        [
            ecb.ProgressBar(),
            ecb.StepBreakdown(),  # the page's "inside a step"
            ecb.JsonlWriter(os.path.join(run_dir, "events.jsonl")),
        ]
    )
    recipe.hparams["epochs"] = epochs
    if resume is not None:
        latest = load_latest(os.path.join(checkpoints, "ckpt_*.pth"))
        if latest is None:
            raise SystemExit(f"evloop demo: no checkpoint to resume from in {checkpoints}")
        recipe.load_state_dict(latest[1])
        done = recipe.progress.completed_epochs
        if done >= epochs:
            raise SystemExit(
                f"evloop demo: {run_dir} has trained {done} epochs already, nothing is left "
                f"of --epochs {epochs}: pass a larger --epochs to train it further"
            )
        print(f"evloop demo: resuming from {latest[0]}", flush=True)
    recipe.to(device)
    server = recipe.serve() if serve else None  # prints the dashboard's URL
    images = len(train.dataset)  # type: ignore[arg-type]
    print(
        f"evloop demo: {dataset}, {images} training images, {epochs} epochs "
        f"on {device}; run folder {run_dir}",
        flush=True,
    )
    start = time.perf_counter()
    try:
        state = recipe.run(total_epochs=epochs)
    except KeyboardInterrupt:
        progress = recipe.progress
        print(
            f"evloop demo: stopped in epoch {progress.epoch + 1}, at iteration {progress.iters} "
            f"(checkpoint written); continue with: evloop demo --resume {run_dir} "
            f"--epochs {epochs}",
            flush=True,
        )
        return None
    took = time.perf_counter() - start
    accuracy = float(state["test_metrics"]["acc"])
    best = load_latest(os.path.join(checkpoints, "*_best.pth"))
    print(
        f"evloop demo: test accuracy {accuracy:.4f} after {epochs} epochs in {took:.1f} s; "
        f"best checkpoint {best[0] if best else 'none'}",
        file=sys.stdout,
        flush=True,
    )
    if server is not None and keep_serving:
        try:  # a Ctrl-C right after the line below is printed ends here too
            print(f"evloop demo: the dashboard stays up at {server.url}; Ctrl-C to exit")
            sys.stdout.flush()
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
    return accuracy
