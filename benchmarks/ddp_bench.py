"""Data-parallel throughput: ``ddp_worker.py`` under torchrun, evloop against a
hand-written loop doing the same work (gloo, one intra-op thread per process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def ddp_throughput(processes: int, plain: bool, fsdp: bool = False) -> float:
    """Global samples/s of one ``ddp_worker.py`` job under ``torchrun`` (gloo, one
    intra-op thread per process)."""
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(processes), worker]
    command += (["--plain"] if plain else []) + (["--fsdp"] if fsdp else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    found = re.search(r"samples/s ([0-9.]+)", out.stdout)
    if found is None:
        raise RuntimeError(f"ddp_worker failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return float(found.group(1))


DISTRIBUTED = {"DDP, 1 process": (1, False), "DDP, 2 processes": (2, False)}
DISTRIBUTED["FSDP2, 2 processes"] = (2, True)


def distributed_rounds(rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(hand-written, evloop) samples/s of each configuration, the two interleaved."""
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in DISTRIBUTED}
    for _ in range(rounds):
        for name, (processes, fsdp) in DISTRIBUTED.items():
            plain = ddp_throughput(processes, True, fsdp)
            results[name].append((plain, ddp_throughput(processes, False, fsdp)))
    return results
