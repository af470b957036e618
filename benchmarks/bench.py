"""Training-loop overhead: plain PyTorch vs evloop vs pytorch-ignite vs pytorch-lightning.

One process, the same data and model (Linear 32->10, batch 64, SGD, one intra-op
thread). Every loop iterates over the same :class:`TimedData`, which timestamps the
steady state (after ``WARMUP`` batches) without adding a hook to any framework.
Each variant runs ``--repeats`` times, interleaved with the others; the table shows
the fastest run of each (the least disturbed by the rest of the machine).

A "slow logger" sleeps 5 ms every 10 iterations: in plain PyTorch, ignite and
lightning it runs where loggers run there (in the loop); in evloop it is a subscriber.

Then: the longest pause of training during an evaluation, the cost of serving the
dashboard to 10 and 100 clients, the event loop's lag while ``arun`` trains, and
data-parallel throughput with 1 and 2 processes (``ddp_worker.py`` under torchrun,
against a hand-written DDP loop). A summary table closes the output.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator

import instructions
import paired
import slow_logger
import torch
from ddp_bench import distributed_rounds
from nested import nested_cost, spread
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe, Subscriber
from evloop.events import BatchEnded

WARMUP = 300
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


# -- plain PyTorch -------------------------------------------------------------------
def plain(data: TimedData, slow: bool) -> None:
    model = nn.Linear(32, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if slow and i % SLOW_EVERY == 0:
            slow_log()


# -- evloop --------------------------------------------------------------------------
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


class SlowSubscriber(Subscriber):
    types = (BatchEnded,)
    every = SLOW_EVERY

    def handle(self, event: BatchEnded) -> None:
        slow_log()


def evloop_bare(data: TimedData, slow: bool) -> None:
    model = nn.Linear(32, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def forward(batch):
        x, y = batch
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    recipe = Recipe(forward, data)
    if slow:
        recipe.callbacks.add_callback(SlowSubscriber())
    recipe.run(1)


def tutorial_recipe(data: Iterable, *callbacks: object) -> Recipe:
    """The bench model's recipe with Counter, Optimizer and ``callbacks``."""
    model, opt, forward = tutorial_model()
    recipe = Recipe(forward, data)
    recipe.register("model", model)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt), *callbacks])
    return recipe


def evloop_tutorial(data: TimedData, slow: bool, guard: bool = False) -> None:
    extra: list[object] = [SlowSubscriber()] if slow else []
    extra += [ecb.DivergenceGuard()] if guard else []
    average = ecb.EpochMetricAvg("loss", post_each_batch=True)
    logger = ecb.StdoutLogger(log_every=10, stream=io.StringIO())
    tutorial_recipe(data, average, logger, *extra).run(1)


def evloop_counter_optimizer(data: TimedData, slow: bool, average: bool = False) -> None:
    """The tutorial set without its logger (and without its averager)."""
    extra: list[object] = [ecb.EpochMetricAvg("loss", post_each_batch=True)] if average else []
    extra += [SlowSubscriber()] if slow else []
    tutorial_recipe(data, *extra).run(1)


def guard_cost(rounds: int = 9, iters: int = 1500) -> tuple[list[float], list[float]]:
    """Training-thread CPU µs/iter of the tutorial set without and with DivergenceGuard."""
    batches = make_data(iters)
    without, with_guard = [], []
    for _ in range(rounds):
        for guard, results in ((False, without), (True, with_guard)):
            data = TimedData(batches)
            torch.manual_seed(0)
            evloop_tutorial(data, False, guard=guard)
            results.append(data.cpu_us_per_iter())
    return without, with_guard


# -- pytorch-ignite ------------------------------------------------------------------
def ignite(data: TimedData, slow: bool) -> None:
    from ignite.engine import Engine, Events
    from ignite.metrics import RunningAverage

    model = nn.Linear(32, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(engine, batch):
        x, y = batch
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    engine = Engine(step)
    RunningAverage(output_transform=lambda out: out).attach(engine, "loss")
    if slow:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=SLOW_EVERY), slow_log)
    engine.run(data, max_epochs=1)


# -- pytorch-lightning ---------------------------------------------------------------
def lightning(data: TimedData, slow: bool) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _lightning(data, slow)


def _lightning(data: TimedData, slow: bool) -> None:
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = nn.Linear(32, 10)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class SlowCallback(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx % SLOW_EVERY == 0:
                slow_log()

    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[SlowCallback()] if slow else [],
    )
    trainer.fit(Module(), train_dataloaders=data)


VARIANTS: dict[str, Callable[[TimedData, bool], None]] = {
    "plain PyTorch": plain,
    "evloop bare": evloop_bare,
    "evloop tutorial set": evloop_tutorial,
    "ignite + RunningAverage": ignite,
    "lightning": lightning,
}

PAIRED: dict[str, Callable[[TimedData, bool], None]] = {
    "plain PyTorch (vs itself)": plain,
    "evloop bare": evloop_bare,
    "evloop Counter + Optimizer": evloop_counter_optimizer,
    "evloop + EpochMetricAvg": lambda data, slow: evloop_counter_optimizer(data, slow, True),
    "evloop tutorial set": evloop_tutorial,
    "ignite + RunningAverage": ignite,
    "lightning": lightning,
}


# -- evaluation stalls ----------------------------------------------------------------
class GapMeter:
    """Longest and median wall-clock gap between consecutive training batch starts."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.gaps: list[float] = []

    def on_batch_start(self, state: dict) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now


def eval_gap(mode: str, train_batches: int = 1500, test_batches: int = 1500) -> tuple:
    """Train the bench model while CallRecipe evaluates it on a test set every 500 steps."""
    model, opt, forward = tutorial_model()

    def test_pass(batch, model):
        x, y = batch
        return {"loss": nn.functional.cross_entropy(model(x), y)}

    test_loop = Recipe(test_pass, make_data(test_batches))
    test_loop.register("model", model, saved=False)
    test_loop.grad_enabled = False
    test_loop.callbacks.add_callback(ecb.EpochMetricAvg("loss", post_each_batch=False))
    recipe = Recipe(forward, make_data(train_batches))
    gaps = GapMeter()
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            gaps,
            ecb.CallRecipe(test_loop, run_every=500, mode=mode),
        ]
    )
    start = time.perf_counter()
    test_loop.run(1)
    eval_seconds = time.perf_counter() - start
    recipe.run(1)
    return max(gaps.gaps), sorted(gaps.gaps)[len(gaps.gaps) // 2], eval_seconds


# -- dashboard clients -----------------------------------------------------------------
def served_run(clients: int, iters: int = 3000, mode: str = "read") -> tuple[float, list[float]]:
    """µs/iter of the tutorial set while serving ``clients`` websocket clients (in
    another process, as browsers would be: reading, flooding the server with messages,
    or never reading), and the readers' publish→receive latencies."""
    import json

    data = TimedData(make_data(iters))
    model, opt, forward = tutorial_model()

    recipe = Recipe(forward, data)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt), ecb.EpochMetricAvg("loss")])
    server = recipe.serve(quiet=True)
    others = None
    if clients:
        script = os.path.join(os.path.dirname(__file__), "ws_clients.py")
        others = subprocess.Popen(
            [sys.executable, script, server.ws_url, str(clients), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert others.stdout is not None and others.stdin is not None
        assert others.stdout.readline().strip() == "ready"
    recipe.run(1)
    latencies: list[float] = []
    if others is not None:
        assert others.stdout is not None and others.stdin is not None
        if mode == "idle":  # the others end by themselves (readers and flooders)
            others.stdin.write("done\n")
            others.stdin.flush()
        latencies = json.loads(others.stdout.readline()).get("latencies_ms", [])
        others.wait(60)
    server.close()
    return data.us_per_iter(), latencies


# -- event-loop lag -------------------------------------------------------------------
def loop_lag(epochs: int = 2) -> tuple[float, float, float]:
    """Lateness (ms) of a task sleeping 1 ms while ``arun`` trains the demo CNN on the
    digits: p50, p99, max."""
    import anyio

    from evloop.demo import digits_loaders, small_cnn
    from evloop.lag import LagProbe

    train, _, _ = digits_loaders()
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    recipe = Recipe(training_step(model), train)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.EpochMetricAvg("loss"),
            ecb.StdoutLogger(log_every=10, stream=io.StringIO()),
        ]
    )

    async def app() -> LagProbe:
        async with LagProbe() as probe:
            await recipe.arun(epochs)
        return probe

    probe = anyio.run(app)
    return probe.percentile(50), probe.percentile(99), max(probe.lateness_ms)


Samples = dict[tuple[str, bool], list[tuple[float, float]]]


def measure(iters: int, repeats: int) -> Samples:
    """(wall, training-thread CPU) µs/iter of every variant, interleaved over rounds."""
    batches = make_data(iters)
    samples: Samples = {}
    for _ in range(repeats):
        for name, fn in VARIANTS.items():
            for slow in (False, True):
                data = TimedData(batches)
                torch.manual_seed(0)
                fn(data, slow)
                samples.setdefault((name, slow), []).append(
                    (data.us_per_iter(), data.cpu_us_per_iter())
                )
    return samples


def _without_slow_logger(
    fn: Callable[[TimedData, bool], None],
) -> Callable[[paired.PairedBlocks], None]:
    return lambda data: fn(data, False)  # type: ignore[arg-type]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def table(samples: Samples) -> str:
    """Medians, the wall-clock range over rounds, and the ratios of medians."""
    base = samples[("plain PyTorch", False)]
    base_wall, base_cpu = _median([w for w, _ in base]), _median([c for _, c in base])
    lines = [
        f"{'loop':<26}{'wall µs/iter [range]':>26}{'× plain':>9}{'CPU µs/iter':>13}"
        f"{'+CPU µs':>9}{'slow logger × own':>19}",
    ]
    for name in VARIANTS:
        fast, slow = samples[(name, False)], samples[(name, True)]
        wall, cpu = _median([w for w, _ in fast]), _median([c for _, c in fast])
        slow_wall = _median([w for w, _ in slow])
        lines.append(
            f"{name:<26}{spread([w for w, _ in fast]):>26}{wall / base_wall:>9.3f}"
            f"{cpu:>13.1f}{cpu - base_cpu:>+9.1f}{slow_wall / wall:>19.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--paired-rounds", type=int, default=6)
    parser.add_argument("--slow-rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    summary: list[tuple[str, str, str]] = []  # the table printed at the end

    samples = measure(args.iters, args.repeats)
    print(
        f"\nTraining-loop overhead ({args.iters} iters, steady state after {WARMUP}; "
        f"medians of {args.repeats} interleaved rounds; slow logger: "
        f"{SLOW_SECONDS * 1e3:.0f} ms every {SLOW_EVERY} iters)"
    )
    print(table(samples))
    base = _median([w for w, _ in samples[("plain PyTorch", False)]])
    base_cpu = _median([c for _, c in samples[("plain PyTorch", False)]])
    for name in VARIANTS:
        fast, slow = samples[(name, False)], samples[(name, True)]
        wall, cpu = _median([w for w, _ in fast]), _median([c for _, c in fast])
        slow_wall = _median([w for w, _ in slow])
        summary.append((name, f"{wall:.1f} µs/iter", f"{wall / base:.3f}× plain"))
        summary.append((f"{name}, CPU", f"{cpu:.1f} µs/iter", f"{cpu - base_cpu:+.1f} µs"))
        summary.append(
            (f"{name} + slow logger", f"{slow_wall:.1f} µs/iter", f"{slow_wall / wall:.3f}× own")
        )

    pairs = paired.measure(
        {name: _without_slow_logger(fn) for name, fn in PAIRED.items()},
        make_data(args.iters),
        args.paired_rounds,
    )
    text, costs = paired.table(pairs)
    print(
        f"\nEngine overhead in the training thread: blocks of {paired.BLOCK} steps alternating "
        f"with as many plain PyTorch steps in the same thread (medians over block pairs, "
        f"{args.paired_rounds} interleaved rounds; quartiles in brackets)"
    )
    print(text)
    for name, (extra_cpu, ratio) in costs.items():
        summary.append((f"{name}, paired", f"{extra_cpu:+.1f} µs CPU/step", f"{ratio:.3f}× plain"))

    slow_batches = make_data(4000)
    slow_runs = slow_logger.measure(
        lambda: TimedData(slow_batches),
        lambda data, logger: tutorial_recipe(data, ecb.EpochMetricAvg("loss"), logger),
        args.slow_rounds,
    )
    text, slow_ratios = slow_logger.table(slow_runs)
    print(
        f"\nThe tutorial set's StdoutLogger writing to a stream that takes "
        f"{slow_logger.WRITE_SECONDS * 1e3:.0f} ms a write ({args.slow_rounds} rounds, "
        "each against its own fast-stream run)"
    )
    print(text)
    for name, ratio in slow_ratios.items():
        if name != "fast stream":
            summary.append((f"StdoutLogger, {name}", "", f"{ratio:.3f}× fast stream"))

    print(
        "\nLongest pause of training while CallRecipe evaluates (1500 test batches every 500 steps)"
    )
    print(f"{'mode':<14}{'longest gap ms':>16}{'median step ms':>16}{'one eval ms':>13}")
    for mode in ("concurrent", "inline"):
        longest, median, evaluation = eval_gap(mode)
        print(f"{mode:<14}{longest * 1e3:>16.1f}{median * 1e3:>16.2f}{evaluation * 1e3:>13.0f}")
        summary.append(
            (f"eval pause, {mode}", f"{longest * 1e3:.1f} ms", f"step {median * 1e3:.2f} ms")
        )

    print(
        "\nServing the live dashboard (tutorial set, per-step events every 10 "
        "iterations; clients in another process; best of 3)"
    )
    print(f"{'clients':<10}{'µs/iter':>10}{'× 0 clients':>13}{'latency p50 ms':>16}{'p99 ms':>9}")
    no_clients = None
    for clients in (0, 10, 100):
        runs = [served_run(clients) for _ in range(3)]
        us = min(r[0] for r in runs)
        latencies = sorted(x for r in runs for x in r[1])
        no_clients = no_clients or us
        p50 = latencies[len(latencies) // 2] if latencies else float("nan")
        p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
        print(f"{clients:<10}{us:>10.1f}{no_clients / us:>13.3f}{p50:>16.2f}{p99:>9.2f}")
        if clients:
            summary.append(
                (
                    f"dashboard, {clients} clients",
                    f"p50 {p50:.1f} / p99 {p99:.1f} ms",
                    f"{no_clients / us:.3f}× speed",
                )
            )
    for clients, mode, label in ((1, "flood", "1 flooding client"), (100, "idle", "100 idle")):
        us = min(served_run(clients, mode=mode)[0] for _ in range(3))
        print(f"{label:<18}{us:>10.1f}{no_clients / us:>13.3f}")
        summary.append(
            (f"dashboard, {label}", f"{us:.1f} µs/iter", f"{no_clients / us:.3f}× speed")
        )

    nested = nested_cost()
    print(
        "\nA nested run: a GAN-like step, the generator's step as G_loop.run(1) vs both "
        "steps in one function (Linear 32->10 x2, batch 64; median [range] of 9 rounds)"
    )
    print(f"{'step':<16}{'wall µs/iter':>26}{'training-thread CPU µs/iter':>32}")
    for name, runs in nested.items():
        print(f"{name:<16}{spread([r[0] for r in runs]):>26}{spread([r[1] for r in runs]):>32}")
    deltas = [
        n[1] - o[1] for n, o in zip(nested["nested run(1)"], nested["one function"], strict=True)
    ]
    print(f"nested run cost, training-thread CPU: {spread(deltas)} µs per run")
    summary.append(
        ("nested run(1)", f"+{statistics.median(deltas):.1f} µs CPU/run", "target ≤ +15")
    )

    without, with_guard = guard_cost()
    ratio = _median(with_guard) / _median(without)
    print(
        f"\nDivergenceGuard on the tutorial set (CPU µs/iter, median [range] of 9): "
        f"{spread(without)} → {spread(with_guard)}, {ratio:.3f}×"
    )
    summary.append(("DivergenceGuard", f"{_median(with_guard):.1f} µs/iter CPU", f"{ratio:.3f}×"))

    p50, p99, worst = loop_lag()
    print("\nEvent-loop lag while arun trains the demo CNN (a task sleeping 1 ms)")
    print(f"p50 {p50:.2f} ms   p99 {p99:.2f} ms   max {worst:.2f} ms")
    summary.append(("event-loop lag", f"p50 {p50:.2f} / p99 {p99:.2f} ms", f"max {worst:.1f} ms"))

    print(
        "\nData-parallel MLP on CPU (torchrun, gloo, one thread per process; samples/s, "
        "medians of 3 interleaved rounds)"
    )
    print(f"{'':<20}{'hand-written':>13}{'evloop':>9}{'× hand-written [range]':>26}")
    for name, runs in distributed_rounds(3).items():
        ratios = [ours / plain for plain, ours in runs]
        plain, ours = _median([p for p, _ in runs]), _median([o for _, o in runs])
        ordered = sorted(ratios)
        ratio = f"{_median(ratios):.3f} [{ordered[0]:.3f}–{ordered[-1]:.3f}]"
        print(f"{name:<20}{plain:>13.0f}{ours:>9.0f}{ratio:>26}")
        summary.append((name, f"{ours:.0f} samples/s", f"{_median(ratios):.3f}× hand-written"))

    counts = instructions.measure()
    print(
        f"\nInstructions per training step (callgrind, steps {instructions.START}–"
        f"{instructions.END}; deterministic, not times)"
    )
    print(instructions.table(counts))
    base_count = counts["plain PyTorch"]
    for name, training in counts.items():
        extra = f"{training - base_count:+,.0f}"
        summary.append((f"{name}, instructions", f"{training:,.0f}/step", extra))

    print("\nSummary")
    width = max(len(row[0]) for row in summary)
    for name, value, ratio in summary:
        print(f"{name:<{width}}  {value:>24}  {ratio}")


if __name__ == "__main__":
    main()
