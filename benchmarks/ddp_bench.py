"""Data-parallel throughput: ``ddp_worker.py`` under torchrun, evloop against a
hand-written loop doing the same work in the same processes, epoch after epoch (gloo,
one intra-op thread per process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

Pair = tuple[float, float, float, float]
"""Samples/s of the hand-written loop and of evloop, then samples per CPU-second."""


def paired_throughputs(
    processes: int, fsdp: bool = False, rounds: int = 3, evloop_path: str | None = None
) -> list[Pair]:
    """Each round's :data:`Pair` of one ``ddp_worker.py`` job under ``torchrun`` (gloo,
    one intra-op thread per process). ``evloop_path``: import evloop from there
    (another version, for a before/after comparison)."""
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes), worker, "--rounds", str(rounds)]
    command += ["--fsdp"] if fsdp else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if evloop_path is not None:
        env["PYTHONPATH"] = evloop_path
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    number = r"([0-9.]+)"
    found = re.findall(rf"samples/s {number} {number} per-cpu-s {number} {number}", out.stdout)
    if len(found) != rounds:
        raise RuntimeError(f"ddp_worker failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return [(float(a), float(b), float(c), float(d)) for a, b, c, d in found]


DISTRIBUTED = {"DDP, 1 process": (1, False), "DDP, 2 processes": (2, False)}
DISTRIBUTED["FSDP2, 2 processes"] = (2, True)


def distributed_rounds(jobs: int, rounds: int = 3) -> dict[str, list[Pair]]:
    """Each configuration's :data:`Pair` s: ``jobs`` jobs of ``rounds`` paired epochs."""
    results: dict[str, list[Pair]] = {name: [] for name in DISTRIBUTED}
    for _ in range(jobs):
        for name, (processes, fsdp) in DISTRIBUTED.items():
            results[name] += paired_throughputs(processes, fsdp, rounds)
    return results
