"""GPU check: host<->device syncs in a served training run, and evloop's cost on CUDA.

Runs the tutorial's final sample (ResNet-18 on CIFAR-sized batches, Counter, Optimizer,
EpochMetricAvg, StdoutLogger, an inline test recipe every 100 iterations) with a
Checkpoint and the dashboard server, one websocket client attached, then:

1. **sync sites**: during a steady-state epoch, under
   ``torch.cuda.set_sync_debug_mode('warn')``, every host<->device sync in any thread
   (training, event loop, server, checkpoint writer), with its thread and stack;
2. **speed**: steady-state time per iteration of a plain PyTorch loop and of the
   evloop recipe on the same model and data, for ResNet-18 and for a tiny model
   (where per-step overhead shows).

Usage: ``python benchmarks/gpu_check.py`` (needs CUDA; ``make gpu-check`` also runs
the sync-debug test). Exits 1 when a sync was found.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import io
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torchvision
from torch import nn
from workload import training_step

import evloop.callbacks as tcb
import evloop.optim
from evloop import Recipe
from evloop.remote.client import subscribe

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def loader(samples: int, batch_size: int, shape: tuple[int, ...], seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(
        torch.randn(samples, *shape, generator=g), torch.randint(0, 10, (samples,), generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, pin_memory=True)


def resnet() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10)


def tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))


def tutorial_recipe(
    model: nn.Module,
    train: Any,
    test: Any | None,
    *,
    run_dir: str | None = None,
    stream: Any = None,
) -> Recipe:
    """The tutorial's final sample (its test loop when ``test`` is given), plus a
    checkpoint when ``run_dir`` is given."""
    opt = evloop.optim.RAdamW(model.parameters(), lr=0.01)
    forward_pass = training_step(model)

    def test_pass(batch):
        x, y = batch
        with torch.no_grad():
            model.eval()
            loss = nn.functional.cross_entropy(model(x), y)
            model.train()
        return {"loss": loss}

    recipe = Recipe(forward_pass, train)
    recipe.register("model", model)
    recipe.register("opt", opt)
    recipe.callbacks.add_callbacks(
        [
            tcb.Counter(),
            tcb.Optimizer(opt),
            tcb.EpochMetricAvg("loss", post_each_batch=True),
            tcb.StdoutLogger(log_every=10, stream=stream),
        ]
    )
    if test is not None:
        test_recipe = Recipe(test_pass, test)
        test_recipe.callbacks.add_callbacks(
            [
                tcb.Counter(),
                tcb.EpochMetricAvg("loss", post_each_batch=False),
                tcb.StdoutLogger(log_every=-1, prefix="Test", stream=stream),
            ]
        )
        recipe.register("test_recipe", test_recipe)
        recipe.callbacks.add_callback(tcb.CallRecipe(test_recipe, run_every=100, prefix="test"))
    if run_dir is not None:
        recipe.callbacks.add_callback(tcb.Checkpoint(run_dir + "/ckpt_{epoch}.pth", recipe))
    return recipe.to(DEVICE)


# -- 1. sync sites ---------------------------------------------------------------------
class SyncSites:
    """Records each CUDA sync warning's thread and Python stack while active."""

    def __init__(self) -> None:
        self.sites: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def recording(self) -> Iterator[SyncSites]:
        shown = warnings.showwarning
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = self._record
            if DEVICE.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield self
            finally:
                if DEVICE.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning = shown

    def _record(self, message: Any, category: Any, filename: str, lineno: int, *rest: Any):
        if "called a synchronizing CUDA operation" not in str(message):
            return
        stack = "".join(traceback.format_stack(limit=14)[:-1])
        with self._lock:
            self.sites[(threading.current_thread().name, stack)] += 1

    def report(self) -> str:
        lines = []
        for (thread, stack), count in self.sites.most_common():
            lines.append(f"--- {count} sync(s) in thread {thread!r}:\n{stack}")
        return "\n".join(lines)


def watch_with_client(url: str, token: str | None, received: list[int]) -> threading.Thread:
    async def listen() -> None:
        with contextlib.suppress(Exception):
            async for _ in subscribe(url, token=token):
                received[0] += 1

    thread = threading.Thread(target=asyncio.run, args=(listen(),), daemon=True, name="ws-client")
    thread.start()
    return thread


@dataclasses.dataclass
class ServedRun:
    recipe: Recipe
    server: Any
    log: io.StringIO
    received: list[int]
    """Frames the websocket client received so far (one counter)."""


@contextlib.contextmanager
def served_tutorial(run_dir: str, batches: int) -> Iterator[ServedRun]:
    """The tutorial's final sample with a checkpoint in ``run_dir``, served with one
    websocket client attached, after a warm-up epoch (cuDNN autotuning, allocator and
    pinned-memory pools): the next ``recipe.run(1)`` is the steady state."""
    log = io.StringIO()
    recipe = tutorial_recipe(
        resnet(),
        loader(256 * batches, 256, (3, 32, 32)),
        loader(256 * 4, 256, (3, 32, 32), seed=1),
        run_dir=run_dir,
        stream=log,
    )
    server = recipe.serve(quiet=True, every=1)
    run = ServedRun(recipe, server, log, [0])
    watch_with_client(server.ws_url, server.token, run.received)
    try:
        recipe.run(1)
        yield run
    finally:
        time.sleep(0.5)  # the last frames reach the client
        server.close()


def find_syncs(batches: int) -> SyncSites:
    sites = SyncSites()
    with tempfile.TemporaryDirectory() as run_dir, served_tutorial(run_dir, batches) as run:
        with sites.recording():
            run.recipe.run(1)
        synchronize()
    lines = run.log.getvalue().count("\n")
    print(f"frames received by the websocket client: {run.received[0]}; log lines: {lines}")
    return sites


# -- 2. speed --------------------------------------------------------------------------
def batches(count: int, shape: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pre-collated pinned batches of 256: the loader costs nothing, the loop shows."""
    g = torch.Generator().manual_seed(0)
    pinned = DEVICE.type == "cuda"
    return [
        (
            torch.randn(256, *shape, generator=g, pin_memory=pinned),
            torch.randint(0, 10, (256,), generator=g, pin_memory=pinned),
        )
        for _ in range(count)
    ]


def plain_loop(model: nn.Module, data: Any, epochs: int, log_every: int | None) -> float:
    """A plain PyTorch loop; with ``log_every`` it prints the running mean loss as
    hand-written loops do (``.item()``: a sync each time)."""
    model.to(DEVICE)
    opt = evloop.optim.RAdamW(model.parameters(), lr=0.01)
    out = io.StringIO()
    per_iter = 0.0
    for _ in range(epochs):
        synchronize()
        start = time.perf_counter()
        total = torch.zeros((), device=DEVICE)
        for i, (x, y) in enumerate(data):
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if log_every:
                total += loss.detach()
                if i % log_every == 0:
                    print(f"It {i} | loss {total.item() / (i + 1):.4f}", file=out)
        synchronize()
        per_iter = (time.perf_counter() - start) / len(data)
    return per_iter


def evloop_loop(model: nn.Module, data: Any, epochs: int, bare: bool = False) -> float:
    """The tutorial's set without its test loop: Counter, Optimizer, EpochMetricAvg,
    StdoutLogger every 10 iterations; ``bare``: Counter and Optimizer only."""
    if bare:
        opt = evloop.optim.RAdamW(model.parameters(), lr=0.01)
        recipe = Recipe(training_step(model), data)
        recipe.register("model", model)
        recipe.callbacks.add_callbacks([tcb.Counter(), tcb.Optimizer(opt)])
        recipe.to(DEVICE)
    else:
        recipe = tutorial_recipe(model, data, None, stream=io.StringIO())
    per_iter = 0.0
    for _ in range(epochs):
        synchronize()
        start = time.perf_counter()
        recipe.run(1)
        synchronize()
        per_iter = (time.perf_counter() - start) / len(data)
    return per_iter


def speed(name: str, make: Callable[[], nn.Module], data: Any, rounds: int = 4) -> str:
    """The four loops, interleaved ``rounds`` times (a GPU's clocks ramp up as it
    works: running each loop's repeats back to back would favour the last), after one
    unmeasured warm-up round; the best epoch of each."""
    loops = {
        "plain": lambda: plain_loop(make(), data, 2, None),
        "plain_log": lambda: plain_loop(make(), data, 2, 10),
        "bare": lambda: evloop_loop(make(), data, 2, bare=True),
        "ours": lambda: evloop_loop(make(), data, 2),
    }
    best = {key: float("inf") for key in loops}
    for round_ in range(rounds + 1):
        for key, loop in loops.items():
            torch.manual_seed(0)
            seconds = loop()
            if round_:
                best[key] = min(best[key], seconds)
    plain, plain_log, bare, ours = best.values()
    return (
        f"| {name} | {plain * 1e6:.0f} | {plain_log * 1e6:.0f} ({plain_log / plain:.3f}×) "
        f"| {bare * 1e6:.0f} ({bare / plain:.3f}×) | {ours * 1e6:.0f} ({ours / plain:.3f}×) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=150, help="per epoch of the sync check")
    parser.add_argument("--scale", type=float, default=1.0, help="of the speed runs' sizes")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved speed rounds")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    if DEVICE.type != "cuda":
        print("no CUDA: a dry run on the CPU (no sync can be detected)")
    else:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    sites = find_syncs(args.batches)
    print(sites.report() or "no host<->device sync during the steady-state epoch")
    if not args.skip_speed:
        rows = [
            "| µs per iteration | plain PyTorch | plain + `.item()` log every 10 "
            "| evloop bare | evloop tutorial set |",
            "| --- | --- | --- | --- | --- |",
            speed(
                "ResNet-18, 256×3×32×32",
                resnet,
                batches(int(40 * args.scale), (3, 32, 32)),
                args.rounds,
            ),
            speed(
                "Linear 192→10, 256×3×8×8",
                tiny,
                batches(int(400 * args.scale), (3, 8, 8)),
                args.rounds,
            ),
        ]
        print("\n".join(rows))
    sys.exit(1 if sites.sites else 0)


if __name__ == "__main__":
    main()
