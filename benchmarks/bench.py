"""Training-loop overhead: plain PyTorch vs evloop vs pytorch-ignite vs pytorch-lightning.

One process, the same data and model (Linear 32->10, batch 64, SGD, one intra-op
thread). Every loop iterates over the same :class:`TimedData`, which timestamps the
steady state (after ``WARMUP`` batches) without adding a hook to any framework.
Each variant runs ``--repeats`` times, interleaved with the others; the table shows
medians with the range over rounds, by wall clock and by the training thread's CPU
time. Then the same loops in paired blocks (:mod:`paired`), which cancels most of a
shared machine's drift.

A "slow logger" sleeps 5 ms every 10 iterations: in plain PyTorch, ignite and
lightning it runs where loggers run there (in the loop); in evloop it is a subscriber.

Then: a logger on a slow stream (:mod:`slow_logger`), the longest pause of training
during an evaluation, the cost of serving the dashboard to 10 and 100 clients,
training speed under hostile clients (a 500-connection command burst and a reconnect
flood, :mod:`attacks`), a nested run, DivergenceGuard, the event loop's lag while
``arun`` trains, and data-parallel throughput with 1 and 2 processes
(``ddp_worker.py`` under torchrun, against a hand-written DDP loop), and instructions
per step under callgrind (:mod:`instructions`). A summary table closes the output.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import warnings
from collections.abc import Callable

import attacks
import captured
import checkpoint_verify
import concurrency
import instructions
import paired
import slow_logger
import torch
from ddp_bench import distributed_rounds
from nested import nested_cost, spread
from torch import nn
from workload import (
    SLOW_EVERY,
    SLOW_SECONDS,
    WARMUP,
    Summary,
    TimedData,
    make_data,
    slow_log,
    tutorial_recipe,
)

import evloop.callbacks as ecb
from evloop import Recipe, Subscriber
from evloop.events import BatchEnded


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


def evloop_tutorial(
    data: TimedData, slow: bool, guard: bool = False, breakdown_every: int | None = None
) -> None:
    extra: list[object] = [SlowSubscriber()] if slow else []
    extra += [ecb.DivergenceGuard()] if guard else []
    extra += [ecb.StepBreakdown(every=breakdown_every)] if breakdown_every else []
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
def ignite(data: TimedData, slow: bool, make_model: Callable[[], nn.Module] | None = None) -> None:
    from ignite.engine import Engine, Events
    from ignite.metrics import RunningAverage

    model = make_model() if make_model is not None else nn.Linear(32, 10)
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
def lightning(
    data: TimedData, slow: bool, make_model: Callable[[], nn.Module] | None = None
) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _lightning(data, slow, make_model or (lambda: nn.Linear(32, 10)))


def _lightning(data: TimedData, slow: bool, make_model: Callable[[], nn.Module]) -> None:
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = make_model()

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


def report_separate_runs(args: argparse.Namespace, summary: Summary) -> None:
    """Each loop in runs of its own, interleaved over rounds."""
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


def report_paired(args: argparse.Namespace, summary: Summary) -> None:
    """The engine's overhead in paired blocks."""
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


def report_slow_logger(args: argparse.Namespace, summary: Summary) -> None:
    """The tutorial set's logger on a slow stream, in process and offloaded."""
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
    alternating = slow_logger.measure_alternating(
        make_data(24_000),
        lambda data, logger: tutorial_recipe(data, ecb.EpochMetricAvg("loss"), logger),
        args.slow_rounds,
    )
    text, medians = slow_logger.alternating_table(alternating)
    print(
        "\nThe same, in alternating blocks of 500 steps within each run (the stream slow "
        "in one block, fast in the next): median per run of each slow block's time over "
        "its fast neighbours'"
    )
    print(text)
    for name, ratio in medians.items():
        summary.append((f"StdoutLogger, slow blocks, {name}", "", f"{ratio:.3f}× fast blocks"))


def report_nested(summary: Summary) -> None:
    """A nested run against the same work in one function."""
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


def report_guard(summary: Summary) -> None:
    """What DivergenceGuard adds to the tutorial set."""
    without, with_guard = guard_cost()
    ratio = _median(with_guard) / _median(without)
    print(
        f"\nDivergenceGuard on the tutorial set (CPU µs/iter, median [range] of 9): "
        f"{spread(without)} → {spread(with_guard)}, {ratio:.3f}×"
    )
    summary.append(("DivergenceGuard", f"{_median(with_guard):.1f} µs/iter CPU", f"{ratio:.3f}×"))


def report_distributed(summary: Summary) -> None:
    """Data-parallel throughput against hand-written DDP."""
    print(
        "\nData-parallel MLP on CPU (torchrun, gloo, one thread per process; samples/s, "
        "medians of 3 jobs x 3 rounds, each round an epoch of each loop in the same job)"
    )
    print(
        f"{'':<20}{'hand-written':>13}{'evloop':>9}{'× hand-written [range]':>26}"
        f"{'× per CPU-second [range]':>28}"
    )
    for name, runs in distributed_rounds(3).items():
        ratios = [ours / plain for plain, ours, _, _ in runs]
        per_cpu = [ours / plain for _, _, plain, ours in runs]
        plain, ours = _median([r[0] for r in runs]), _median([r[1] for r in runs])
        print(
            f"{name:<20}{plain:>13.0f}{ours:>9.0f}{spread(ratios, 3):>26}{spread(per_cpu, 3):>28}"
        )
        summary.append((name, f"{ours:.0f} samples/s", f"{_median(ratios):.3f}× hand-written"))


def report_instructions(summary: Summary) -> None:
    """Instructions per step under callgrind."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--paired-rounds", type=int, default=6)
    parser.add_argument("--slow-rounds", type=int, default=5)
    parser.add_argument(
        "--captured-only", action="store_true", help="only the captured whole step's rows"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    summary: Summary = []
    captured.report(summary)
    if args.captured_only:
        _print_summary(summary)
        return
    report_separate_runs(args, summary)
    report_paired(args, summary)
    report_slow_logger(args, summary)
    concurrency.report_eval_pauses_and_dashboard(summary)
    attacks.report_attacks(summary)
    report_nested(summary)
    report_guard(summary)
    concurrency.report_loop_lag(summary)
    report_distributed(summary)
    report_instructions(summary)
    checkpoint_verify.report(summary)
    _print_summary(summary)


def _print_summary(summary: Summary) -> None:
    print("\nSummary")
    width = max(len(row[0]) for row in summary)
    for name, value, ratio in summary:
        print(f"{name:<{width}}  {value:>24}  {ratio}")


if __name__ == "__main__":
    main()
