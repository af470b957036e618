"""What concurrent work costs training: an evaluation running beside it, dashboard
clients, and the event loop's lag for the rest of an async app."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import torch
from torch import nn
from workload import Summary, TimedData, make_data, training_step, tutorial_model

import evloop.callbacks as ecb
from evloop import Recipe


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
    # every client comes from this machine's one address: its budget allows them
    server = recipe.serve(quiet=True, handshake_burst=clients + 40)
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


def report_eval_pauses_and_dashboard(summary: Summary) -> None:
    """The evaluation and dashboard tables."""
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


def report_loop_lag(summary: Summary) -> None:
    """The event loop's lateness while a recipe trains."""
    p50, p99, worst = loop_lag()
    print("\nEvent-loop lag while arun trains the demo CNN (a task sleeping 1 ms)")
    print(f"p50 {p50:.2f} ms   p99 {p99:.2f} ms   max {worst:.2f} ms")
    summary.append(("event-loop lag", f"p50 {p50:.2f} / p99 {p99:.2f} ms", f"max {worst:.1f} ms"))
