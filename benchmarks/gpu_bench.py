"""Per-step cost on one GPU: plain PyTorch, evloop (bare, the tutorial's callbacks,
compiled), pytorch-ignite and pytorch-lightning on the same model and data.

An MLP 3072→512→10 at batch 512 with AdamW (an overhead-bound step: where a training
loop's own cost shows), then ResNet-18 at batch 256. The batches sit on the GPU
already. Each variant keeps its model across rounds (so a compiled step compiles
once); the rounds interleave the variants, and the table gives the median time per
step of the timed part of each epoch, its range over rounds, and the ratio of medians
to plain PyTorch. Usage: ``python benchmarks/gpu_bench.py [--rounds 5]`` (needs CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torchvision
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe

WARMUP = 50
Run = Callable[[], None]


class TimedData:
    """The batches; the GPU time between batch WARMUP and the end of the epoch."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.start = self.end = 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Some engines never ask past the last batch: the window ends when it is asked
        # for, after the steps before it are done.
        last = len(self.batches) - 1
        for i, batch in enumerate(self.batches):
            if i in (WARMUP, last):
                torch.cuda.synchronize()
                if i == WARMUP:
                    self.start = time.perf_counter()
                else:
                    self.end = time.perf_counter()
            yield batch

    def us_per_step(self) -> float:
        return (self.end - self.start) / (len(self.batches) - 1 - WARMUP) * 1e6


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 512), nn.ReLU(), nn.Linear(512, 10))


def resnet() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10)


def batches(count: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, size, 3, 32, 32, generator=g).cuda()
    y = torch.randint(0, 10, (8, size), generator=g).cuda()
    return [(x[i % 8], y[i % 8]) for i in range(count)]


def adamw(model: nn.Module, capturable: bool = False) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=capturable)


def plain(make: Callable[[], nn.Module], data: TimedData, item_every: int = 0) -> Run:
    model = make().cuda()
    opt = adamw(model)

    def epoch() -> None:
        total = 0.0
        for i, (x, y) in enumerate(data):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if item_every and i % item_every == 0:
                total += loss.item()  # what a hand-written loop's logging costs

    return epoch


def evloop_run(
    make: Callable[[], nn.Module], data: TimedData, callbacks: str, compiled: bool = False
) -> Run:
    model = make().cuda()
    opt = adamw(model, capturable=compiled)

    def forward_pass(batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward_pass, data)
    recipe.register("model", model)
    recipe.to("cuda")
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt)])
    if callbacks == "tutorial":
        sink = io.StringIO()
        logger = ecb.StdoutLogger(log_every=10, stream=sink)
        recipe.callbacks.add_callbacks([ecb.EpochMetricAvg("loss"), logger])
    if compiled:
        recipe.compile(mode="reduce-overhead")
    return lambda: recipe.run(1) and None


def ignite(make: Callable[[], nn.Module], data: TimedData) -> Run:
    from ignite.engine import Engine
    from ignite.metrics import RunningAverage

    model = make().cuda()
    opt = adamw(model)

    def step(engine: Any, batch: Any) -> torch.Tensor:
        x, y = batch
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    engine = Engine(step)
    RunningAverage(output_transform=lambda out: out).attach(engine, "loss")
    return lambda: engine.run(data, max_epochs=1) and None


def lightning(make: Callable[[], nn.Module], data: TimedData) -> Run:
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return adamw(self.model)

    module = Module()

    def epoch() -> None:
        trainer = pl.Trainer(
            max_epochs=1,
            accelerator="gpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer.fit(module, train_dataloaders=data)

    return epoch


def variants(make: Callable[[], nn.Module], size: int, steps: int, full: bool) -> dict:
    made: dict[str, tuple[TimedData, Run]] = {}

    def add(name: str, build: Callable[[TimedData], Run]) -> None:
        data = TimedData(batches(steps, size))
        made[name] = (data, build(data))

    add("plain PyTorch", lambda d: plain(make, d))
    add("plain + .item() every 10", lambda d: plain(make, d, item_every=10))
    add("evloop Counter+Optimizer", lambda d: evloop_run(make, d, "bare"))
    add("evloop tutorial set", lambda d: evloop_run(make, d, "tutorial"))
    if full:
        add("evloop tutorial set, compiled", lambda d: evloop_run(make, d, "tutorial", True))
    for name, build in (("pytorch-ignite", ignite), ("pytorch-lightning", lightning)):
        try:
            add(name, lambda d, build=build: build(make, d))
        except ImportError as missing:
            print(f"({name} not installed: {missing})")
    return made


def table(title: str, made: dict, rounds: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in made}
    for name, (_, run) in made.items():  # warm-up (and compile) once
        start = time.perf_counter()
        run()
        print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    for _ in range(rounds):
        for name, (data, run) in made.items():
            run()
            times[name].append(data.us_per_step())
    base = statistics.median(times["plain PyTorch"])
    print(f"\n{title} — µs/step, median [range] of {rounds} interleaved rounds")
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"[{min(values):.0f}–{max(values):.0f}]"
        print(f"{name:<32}{median:>9.0f} {spread:<14}{median / base:>7.3f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py needs CUDA")
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    table("MLP 3072→512→10, batch 512", variants(mlp, 512, 400, True), args.rounds)
    table("ResNet-18 fp32, batch 256", variants(resnet, 256, 120, False), args.rounds)


if __name__ == "__main__":
    main()
