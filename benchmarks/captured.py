"""The captured whole step (``recipe.compile(whole_step=True)``) on an overhead-bound
step: MLP 32->64->10, batch 64, SGD lr 0.05, one intra-op thread.

Rows, interleaved over rounds (medians, ranges): plain eager PyTorch, the tutorial set
(Counter, Optimizer, EpochMetricAvg, StdoutLogger) eager, the same captured, and a
hand-written functional whole step (``torch.func.grad_and_value`` over
``functional_call``, a foreach SGD update, one ``torch.compile(fullgraph=True)``
graph): the reference for what one graph can do. Also the loss curves of the
captured and eager tutorial sets, and the time spent compiling.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from nested import spread
from torch import nn
from workload import Summary, TimedData, make_data

import evloop.callbacks as ecb
from evloop import Recipe

LR = 0.05


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def convnet() -> nn.Module:
    """A small conv net for 1x16x16 images (batch 32): still overhead-bound."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


MODEL = {"make": mlp}


def plain(data: TimedData, _: dict[str, Any]) -> None:
    model = MODEL["make"]()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for x, y in data:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


def tutorial(data: TimedData, out: dict[str, Any], captured: bool = False) -> None:
    model = MODEL["make"]()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses: list[torch.Tensor] = []

    def forward(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    class Keep:
        def on_batch_end(self, state: dict[str, Any]) -> None:
            losses.append(state["loss"])

    recipe = Recipe(forward, data)
    recipe.register("model", model)
    logger = ecb.StdoutLogger(log_every=10, stream=io.StringIO())
    average = ecb.EpochMetricAvg("loss")
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt), average, logger])
    if out.get("keep_losses"):
        recipe.callbacks.add_callback(Keep())
    if captured:
        recipe.compile(whole_step=True)
    recipe.run(1)
    out["losses"] = [float(v.detach()) for v in losses]
    if captured:
        out["compile_s"] = recipe.call_fun.compile_s  # type: ignore[attr-defined]
        out["captured"] = recipe.call_fun.captured_steps  # type: ignore[attr-defined]


def functional(data: TimedData, out: dict[str, Any]) -> None:
    model = mlp()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_of(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        logits = torch.func.functional_call(model, params, (x,))
        return nn.functional.cross_entropy(logits, y)

    grad_and_value = torch.func.grad_and_value(loss_of)

    @torch.compile(fullgraph=True)
    def step(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        grads, loss = grad_and_value(params, x, y)
        torch._foreach_add_(list(params.values()), list(grads.values()), alpha=-LR)
        return loss

    started = time.perf_counter()
    for i, (x, y) in enumerate(data):
        step(params, x, y)
        if i == 0:
            out["compile_s"] = time.perf_counter() - started


def _peer(name: str, data: TimedData) -> None:
    """A peer's loop from the main benchmark (``bench.ignite``…), on this MLP."""
    import bench  # imported here: bench imports this module

    getattr(bench, name)(data, False, make_model=MODEL["make"])


VARIANTS: dict[str, Callable[[TimedData, dict[str, Any]], None]] = {
    "plain eager PyTorch": plain,
    "evloop tutorial set": tutorial,
    "evloop tutorial set, captured": lambda data, out: tutorial(data, out, True),
    "hand-written functional step": functional,
    "pytorch-ignite + RunningAverage": lambda data, out: _peer("ignite", data),
    "pytorch-lightning": lambda data, out: _peer("lightning", data),
}


def measure(
    iters: int, rounds: int, variants: tuple[str, ...] = tuple(VARIANTS), batches: Any = None
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """CPU µs/step of the training thread, per variant, interleaved over rounds."""
    batches = make_data(iters) if batches is None else batches
    samples: dict[str, list[float]] = {}
    facts: dict[str, Any] = {}
    for round_ in range(rounds):
        for name in variants:
            fn = VARIANTS[name]
            data = TimedData(batches)
            out: dict[str, Any] = {"keep_losses": round_ == 0}
            fn(data, out)
            samples.setdefault(name, []).append(data.cpu_us_per_iter())
            if round_ == 0:
                facts[name] = out
    return samples, facts


def report(summary: Summary, iters: int = 1500, rounds: int = 5) -> None:
    samples, facts = measure(iters, rounds)
    base = statistics.median(samples["plain eager PyTorch"])
    print(
        f"\nThe captured whole step: MLP 32->64->10, batch 64, SGD lr {LR}, one thread "
        f"(training-thread CPU µs/step, steady state; medians [range] of {rounds} "
        f"interleaved rounds of {iters} steps)"
    )
    print(f"{'loop':<34}{'µs/step [range]':>28}{'× plain':>9}{'faster':>9}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<34}{spread(values):>28}{median / base:>9.3f}{base / median:>8.2f}×")
        summary.append((f"{name} (MLP 32-64-10)", f"{median:.1f} µs/step", f"{median / base:.3f}×"))
    eager = facts["evloop tutorial set"]["losses"]
    captured_run = facts["evloop tutorial set, captured"]
    worst = max(abs(c - e) / abs(e) for c, e in zip(captured_run["losses"], eager, strict=True))
    print(
        f"captured: {captured_run['captured']} of {iters} steps in the graph (the first is "
        f"the optimizer's eager one); compiling {captured_run['compile_s']:.1f} s; the "
        f"hand-written step's {facts['hand-written functional step']['compile_s']:.1f} s; "
        f"loss curve vs eager over {len(eager)} steps: max relative difference {worst:.2e}"
    )
    summary.append(("captured step, compile time", f"{captured_run['compile_s']:.1f} s", ""))
    summary.append(("captured step, loss vs eager", f"{worst:.2e} max rel.", ""))
    report_convnet(summary, iters, rounds)


def report_convnet(summary: Summary, iters: int, rounds: int) -> None:
    """The same on a small conv net (1x16x16 images, batch 32)."""
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(32, 1, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g))
        for _ in range(iters)
    ]
    names = ("plain eager PyTorch", "evloop tutorial set", "evloop tutorial set, captured")
    MODEL["make"] = convnet
    try:
        samples, facts = measure(iters, rounds, names, batches)
    finally:
        MODEL["make"] = mlp
    base = statistics.median(samples["plain eager PyTorch"])
    print("\nThe same on a small conv net (2 convolutions, 1x16x16 images, batch 32)")
    print(f"{'loop':<34}{'µs/step [range]':>28}{'× plain':>9}{'faster':>9}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<34}{spread(values):>28}{median / base:>9.3f}{base / median:>8.2f}×")
        summary.append((f"{name} (conv net)", f"{median:.1f} µs/step", f"{median / base:.3f}×"))
    captured_run = facts["evloop tutorial set, captured"]
    print(f"compiling {captured_run['compile_s']:.1f} s")


if __name__ == "__main__":
    torch.set_num_threads(1)
    table: Summary = []
    report(table)
