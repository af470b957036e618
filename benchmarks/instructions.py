"""Instructions per training step, counted by valgrind's callgrind: plain PyTorch, evloop
with more and more of the tutorial set, pytorch-ignite and pytorch-lightning.

Counts of executed instructions do not move with the rest of a shared machine (the
same run gives the same count to within a few hundredths of a percent), so a change of
a few hundred instructions a step shows where timings, ±30% on a shared VM, cannot.
They are not times: the engine's code runs between torch's kernels with cold caches,
so an instruction of it costs more than an instruction of a kernel.

Each variant runs in a process of its own under callgrind with instrumentation off
until the data reaches batch ``START`` (``import torch`` at near native speed); the
data then switches it on and zeroes the counters, and at batch ``END`` asks for a dump
(``callgrind_control``). Threads are counted apart and only the training thread (the
one that ran the most) is reported: the event loop's count depends on time (it wakes
on ticks, and under valgrind a step takes ~50 times as long), so it is not steady.
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

START, END = 200, 700
VARIANTS = (
    "plain PyTorch",
    "evloop bare",
    "evloop Counter + Optimizer",
    "evloop + EpochMetricAvg",
    "evloop tutorial set",
    "ignite + RunningAverage",
    "lightning",
    "GAN step in one function",
    "GAN step, nested run(1)",
    "tutorial + StepBreakdown(10)",
    "tutorial + StepBreakdown(1)",
)
NESTED = {"GAN step in one function": False, "GAN step, nested run(1)": True}
BREAKDOWN = {"tutorial + StepBreakdown(10)": 10, "tutorial + StepBreakdown(1)": 1}


class Window:
    """The batches; counting runs from the request of batch START to that of END."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        for i, batch in enumerate(self.batches):
            if i == START:
                # Collections then walk only what the loop itself made, not however
                # many objects the imports left (which differs from run to run).
                gc.collect()
                gc.freeze()
                _control("--instr=on", "--zero")
            elif i == END:
                _control("--dump=window")
            yield batch


def _control(*requests: str) -> None:
    for request in requests:
        subprocess.run(
            ["callgrind_control", request, str(os.getpid())],
            check=True,
            capture_output=True,
            timeout=120,
        )


def child(variant: str) -> None:
    """Run ``variant`` once over a :class:`Window` (inside valgrind)."""
    import logging
    import warnings

    import bench
    import torch
    import workload

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    batches = workload.make_data(100) * ((END + 100) // 100)
    torch.manual_seed(0)
    if variant in NESTED:  # Torchélie's GAN pattern (benchmarks/nested.py)
        import nested

        nested.gan_loop(Window(batches), NESTED[variant])
        return
    if variant in BREAKDOWN:  # the tutorial set with every 10th (or every) step timed
        bench.evloop_tutorial(Window(batches), False, breakdown_every=BREAKDOWN[variant])
        return
    bench.PAIRED[variant if variant != "plain PyTorch" else "plain PyTorch (vs itself)"](
        Window(batches), False
    )


def count(variant: str, folder: str) -> float:
    """The training thread's instructions per step of ``variant``."""
    out = os.path.join(folder, re.sub(r"\W+", "_", variant))
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes"]
    command += [f"--callgrind-out-file={out}.%p", sys.executable, __file__, "--child", variant]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PL_DISABLE_FORK": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
    dumps = [path for path in glob.glob(f"{out}.*") if _is_window(path)]
    if done.returncode or not dumps:
        raise RuntimeError(f"{variant} under callgrind failed:\n{done.stderr[-3000:]}")
    return max(_instructions(path) for path in dumps) / (END - START)


def _is_window(path: str) -> bool:
    with open(path, errors="replace") as file:
        head = file.read(4096)
    return "Trigger: dump window" in head


def _instructions(path: str) -> int:
    with open(path, errors="replace") as file:
        for line in file:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no summary in {path}")


def measure(variants: tuple[str, ...] = VARIANTS) -> dict[str, float]:
    """Every variant's counts, two at a time (one per core)."""
    folder = tempfile.mkdtemp(prefix="evloop-callgrind-")
    try:
        with ThreadPoolExecutor(2) as pool:
            counts = list(pool.map(lambda v: count(v, folder), variants))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return dict(zip(variants, counts, strict=True))


def table(counts: dict[str, float]) -> str:
    base = counts["plain PyTorch"]
    lines = [f"{'loop':<28}{'training thread':>16}{'× plain':>9}{'+ per step':>12}"]
    for name, training in counts.items():
        lines.append(
            f"{name:<28}{training:>16,.0f}{training / base:>9.3f}{training - base:>+12,.0f}"
        )
    if all(name in counts for name in (*NESTED, "evloop bare")):
        run = counts["GAN step, nested run(1)"] - counts["GAN step in one function"]
        bare = counts["evloop bare"] - base
        lines.append(
            f"a nested run(1) costs {run:+,.0f} instructions, {run / bare:.2f}× a bare "
            f"step's engine cost ({bare:+,.0f})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=VARIANTS, help="only these loops"
    )
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("\nInstructions per step: skipped (valgrind is not installed)")
        return
    print(
        f"\nInstructions per training step (callgrind, steps {START}–{END}; "
        "deterministic, not times)"
    )
    variants = tuple(args.variants)
    if "plain PyTorch" not in variants:
        variants = ("plain PyTorch", *variants)
    print(table(measure(variants)))


if __name__ == "__main__":
    main()
