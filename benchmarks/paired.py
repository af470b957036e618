"""Engine overhead against plain PyTorch, in alternating blocks of the same thread.

A shared 2-core VM changes speed by ±30% from one second to the next (its CPU time
moves with its wall time: the machine itself is slower), which swamps a difference of
a few µs per step between two runs made seconds apart. Here the data itself runs a
block of plain PyTorch steps (a model and optimizer of its own, the same batches)
before every block of the framework's steps, in the framework's training thread: the
two blocks of a pair are ~10 ms apart, so the machine's drift cancels in their
difference. Any framework that iterates over its data can be measured so.

What this leaves out: work the framework does in other threads (an event loop's
consumers) runs during both kinds of block, so its indirect cost on the training
thread (a core or cache shared) is charged to both; ``bench.py``'s separate runs
include it, with their larger spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

BLOCK = 50  # steps per block
WARMUP_BLOCKS = 4

Batch = tuple[torch.Tensor, torch.Tensor]


class PairedBlocks:
    """The batches, with a block of plain steps run before every ``BLOCK`` of them."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.model = nn.Linear(batches[0][0].shape[1], 10)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.pairs: list[tuple[float, float, float, float]] = []
        """(framework wall, framework CPU, plain wall, plain CPU) seconds per block."""

    def __len__(self) -> int:
        return len(self.batches)

    def _plain_block(self, start: int) -> None:
        model, opt = self.model, self.opt
        for x, y in self.batches[start : start + BLOCK]:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

    def __iter__(self) -> Iterator[Batch]:
        mark: tuple[float, float] | None = None
        plain = (0.0, 0.0)
        for i, batch in enumerate(self.batches):
            if i % BLOCK == 0 and i + BLOCK <= len(self.batches):
                now = time.perf_counter(), time.thread_time()
                if mark is not None and i >= WARMUP_BLOCKS * BLOCK:
                    ours = now[0] - mark[0], now[1] - mark[1]
                    self.pairs.append((*ours, *plain))
                start = time.perf_counter(), time.thread_time()
                self._plain_block(i)
                end = time.perf_counter(), time.thread_time()
                plain = end[0] - start[0], end[1] - start[1]
                mark = time.perf_counter(), time.thread_time()
            yield batch


Runner = Callable[[PairedBlocks], None]


def measure(
    variants: dict[str, Runner], batches: list[Batch], rounds: int
) -> dict[str, list[tuple[float, float, float, float]]]:
    """Every variant's block pairs, the variants interleaved over ``rounds``, with one
    torch thread: a second one spins in a worker thread's OpenMP team and counts
    against that thread's CPU time (plain steps measured 3× their cost so)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(variants, batches, rounds)
    finally:
        torch.set_num_threads(threads)


def _measure(
    variants: dict[str, Runner], batches: list[Batch], rounds: int
) -> dict[str, list[tuple[float, float, float, float]]]:
    pairs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            data = PairedBlocks(batches)
            torch.manual_seed(0)
            run(data)
            pairs[name] += data.pairs
    return pairs


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return q1, median, q3


def table(pairs: dict[str, list[tuple[float, float, float, float]]]) -> tuple[str, dict]:
    """Per variant: the median over block pairs of (ours − plain) training-thread CPU µs
    per step and of ours / plain wall time, with their quartiles."""
    lines = [
        f"{'loop':<30}{'pairs':>6}{'plain CPU µs/step':>19}"
        f"{'+CPU µs/step [q1–q3]':>26}{'× plain wall [q1–q3]':>26}"
    ]
    summary = {}
    for name, rows in pairs.items():
        extra = [(cpu - plain_cpu) / BLOCK * 1e6 for _, cpu, _, plain_cpu in rows]
        ratio = [wall / plain_wall for wall, _, plain_wall, _ in rows]
        plain_cpu = statistics.median(p for *_, p in rows) / BLOCK * 1e6
        e1, e, e3 = quartiles(extra)
        r1, r, r3 = quartiles(ratio)
        summary[name] = (e, r)
        lines.append(
            f"{name:<30}{len(rows):>6}{plain_cpu:>19.1f}"
            f"{f'{e:+.1f} [{e1:+.1f}–{e3:+.1f}]':>26}{f'{r:.3f} [{r1:.3f}–{r3:.3f}]':>26}"
        )
    return "\n".join(lines), summary
