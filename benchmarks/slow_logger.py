"""A StdoutLogger writing to a stream that takes 5 ms a write, in the training process
and offloaded to a child process, against the same logger writing to a fast stream.

Each round runs the three back to back (the machine's drift changes little within a
round) and gives each slow run's steady-state time as a ratio to the fast run's.
Deliveries per second of training are the times the logger's consumer in the
training process woke (each takes the interpreter lock).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
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
