"""A StdoutLogger writing to a stream that takes 5 ms a write, in the training process
and offloaded to a child process, against the same logger writing to a fast stream.

Separate runs: each round runs the three back to back and gives each slow run's
steady-state time as a ratio to the fast run's. Deliveries per second of training are
the times the logger's consumer in the training process woke (each takes the
interpreter lock). On a shared VM whose speed drifts by ±30% within seconds, rounds
spread by about as much as the effect looked for; so, alternating blocks: in one run,
the stream is slow for a block of steps, fast for the next, and so on (a flag file
that the writer looks at: it works in a child process too), and each slow block's
time is compared with its fast neighbours', ~50 ms apart.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import evloop.callbacks as ecb
from evloop import Recipe

WRITE_SECONDS = 0.005


class SlowStream:
    """A terminal or pipe that takes 5 ms per write (picklable: it can be offloaded)."""

    def write(self, text: str) -> int:
        time.sleep(WRITE_SECONDS)
        return len(text)

    def flush(self) -> None:
        pass


class NullStream(SlowStream):
    def write(self, text: str) -> int:
        return len(text)


class SwitchingStream(SlowStream):
    """Slow while the file ``flag`` exists, fast otherwise."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def write(self, text: str) -> int:
        if os.path.exists(self.flag):
            time.sleep(WRITE_SECONDS)
        return len(text)


class AlternatingBlocks:
    """The batches, the stream switched between slow and fast every ``block`` steps,
    each block's wall time recorded (the first two blocks are warm-up)."""

    def __init__(self, batches: list[Any], flag: str, block: int = 500) -> None:
        self.batches, self.flag, self.block = batches, flag, block
        self.times: list[tuple[bool, float]] = []  # (slow, seconds) per block

    def __len__(self) -> int:
        return len(self.batches)

    def _switch(self, slow: bool) -> None:
        if slow:
            Path(self.flag).touch()
        else:
            Path(self.flag).unlink(missing_ok=True)

    def __iter__(self) -> Any:
        slow, start = False, 0.0
        for i, batch in enumerate(self.batches):
            if i % self.block == 0:
                now = time.perf_counter()
                if i >= 3 * self.block:
                    self.times.append((slow, now - start))
                slow = (i // self.block) % 2 == 1
                self._switch(slow)
                start = time.perf_counter()
            yield batch
        self._switch(False)

    def ratios(self) -> list[float]:
        """Each slow block's time over the mean of its fast neighbours'."""
        out = []
        for i, (slow, seconds) in enumerate(self.times):
            if slow and 0 < i < len(self.times) - 1:
                out.append(seconds / ((self.times[i - 1][1] + self.times[i + 1][1]) / 2))
        return out


ALTERNATING: dict[str, Callable[[str], Any]] = {
    "in process": lambda flag: ecb.StdoutLogger(log_every=10, stream=SwitchingStream(flag)),
    "Offload": lambda flag: ecb.Offload(
        ecb.StdoutLogger(log_every=10, stream=SwitchingStream(flag))
    ),
}


def measure_alternating(
    batches: list[Any], make_recipe: MakeRecipe, rounds: int
) -> dict[str, list[list[float]]]:
    """Per logger, per run: the slow blocks' ratios to their fast neighbours."""
    results: dict[str, list[list[float]]] = {name: [] for name in ALTERNATING}
    with tempfile.TemporaryDirectory() as folder:
        flag = os.path.join(folder, "slow")
        for _ in range(rounds):
            for name, make_logger in ALTERNATING.items():
                data = AlternatingBlocks(batches, flag)
                torch.manual_seed(0)
                make_recipe(data, make_logger(flag)).run(1)
                results[name].append(data.ratios())
    return results


def alternating_table(results: dict[str, list[list[float]]]) -> tuple[str, dict[str, float]]:
    lines = [f"{'StdoutLogger(log_every=10)':<28}{'slow block / fast neighbours, per run':>40}"]
    medians: dict[str, float] = {}
    for name, runs in results.items():
        per_run = [statistics.median(r) for r in runs]
        medians[name] = statistics.median(per_run)
        lines.append(f"{name:<28}{'  '.join(f'{r:.3f}' for r in per_run):>40}")
    return "\n".join(lines), medians


MakeRecipe = Callable[[Any, Any], Recipe]
"""``(data, logger)``: the tutorial set's recipe over ``data``, with ``logger``."""


def _run(data: Any, make_recipe: MakeRecipe, logger: Any) -> dict[str, float]:
    recipe = make_recipe(data, logger)
    recipe.run(1)
    deliveries = sum(s.deliveries for s in recipe.bus.subscriptions if s.owner is logger)
    training_seconds = data.us_per_iter() * len(data) / 1e6  # not the child's start
    return {"deliveries/s": deliveries / training_seconds}


LOGGERS: dict[str, Callable[[], Any]] = {
    "fast stream": lambda: ecb.StdoutLogger(log_every=10, stream=NullStream()),
    "slow stream, in process": lambda: ecb.StdoutLogger(log_every=10, stream=SlowStream()),
    "slow stream, Offload": lambda: ecb.Offload(
        ecb.StdoutLogger(log_every=10, stream=SlowStream())
    ),
}


def measure(
    make_data: Callable[[], Any], make_recipe: MakeRecipe, rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Per logger and round: wall and CPU µs/iter, the ratio to the round's fast run,
    and the consumer's deliveries per second."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in LOGGERS}
    for _ in range(rounds):
        fast_wall = 0.0
        for name, make_logger in LOGGERS.items():
            data = make_data()
            torch.manual_seed(0)
            row = _run(data, make_recipe, make_logger())
            row["wall"], row["cpu"] = data.us_per_iter(), data.cpu_us_per_iter()
            fast_wall = fast_wall or row["wall"]
            row["ratio"] = row["wall"] / fast_wall
            results[name].append(row)
    return results


def table(results: dict[str, list[dict[str, float]]]) -> tuple[str, dict[str, float]]:
    lines = [
        f"{'StdoutLogger(log_every=10) to':<28}{'wall µs/iter':>14}{'CPU µs/iter':>13}"
        f"{'× fast, median [range] of rounds':>36}{'deliveries/s':>14}"
    ]
    medians: dict[str, float] = {}
    for name, rows in results.items():
        ratios = sorted(r["ratio"] for r in rows)
        medians[name] = statistics.median(ratios)
        spread = f"{medians[name]:.3f} [{ratios[0]:.3f}–{ratios[-1]:.3f}]"
        lines.append(
            f"{name:<28}{statistics.median(r['wall'] for r in rows):>14.1f}"
            f"{statistics.median(r['cpu'] for r in rows):>13.1f}{spread:>36}"
            f"{statistics.median(r['deliveries/s'] for r in rows):>14.0f}"
        )
    return "\n".join(lines), medians
