"""What checking a checkpoint on load costs: a 1 GB file loaded with and without the
CRC-32 check of its records (the default), and with a SHA-256 digest (``checksum=True``).

The rounds interleave the three ways; the file stays in the page cache (a cold read
from disk would dominate all three alike). Run on its own:
``python benchmarks/checkpoint_verify.py --megabytes 1024``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from workload import Summary

from evloop.checkpoint_io import CHECKSUM_SUFFIX, atomic_save, load


def _seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(megabytes: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per load, by way of loading, over ``rounds`` interleaved rounds."""
    times: dict[str, list[float]] = {"unchecked": [], "CRC-32 (default)": [], "SHA-256": []}
    with tempfile.TemporaryDirectory() as folder:
        plain = os.path.join(folder, "plain.pth")
        digested = os.path.join(folder, "digested.pth")
        state = {"w": torch.ones(megabytes * 1024 * 1024 // 4)}
        atomic_save(state, plain)
        atomic_save(state, digested, checksum=True)
        del state
        assert os.path.exists(digested + CHECKSUM_SUFFIX)
        ways = {
            "unchecked": lambda: load(plain, verify=False),
            "CRC-32 (default)": lambda: load(plain),
            "SHA-256": lambda: load(digested),
        }
        for way in ways.values():  # warm the page cache
            way()
        for _ in range(rounds):
            for name, way in ways.items():
                times[name].append(_seconds(way))
    return times


def report(summary: Summary, megabytes: int = 1024, rounds: int = 5) -> None:
    times = measure(megabytes, rounds)
    base = statistics.median(times["unchecked"])
    print(f"\nLoading a {megabytes} MB checkpoint (page cache warm), median of {rounds} rounds")
    print(f"{'':<20}{'seconds':>10}{'× unchecked':>14}{'range (s)':>20}")
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"{min(values):.3f}–{max(values):.3f}"
        print(f"{name:<20}{median:>10.3f}{median / base:>14.2f}{spread:>20}")
        summary.append((f"load {megabytes} MB, {name}", f"{median:.3f} s", f"{median / base:.2f}×"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report([], args.megabytes, args.rounds)
