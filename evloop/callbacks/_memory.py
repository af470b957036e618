"""Memory plumbing for SystemMetrics: a process's peak RSS reset per epoch, the CUDA
allocator's peaks, its allocation history, and a snapshot written when CUDA runs out
of memory."""

from __future__ import annotations

import logging
import os
import pickle
import re
import resource
import sys
from typing import Any

import torch

__all__ = [
    "reset_peaks",
    "epoch_peaks",
    "record_history",
    "stop_history",
    "is_out_of_memory",
    "write_snapshot",
    "SNAPSHOT_VIEWER",
]

log = logging.getLogger("evloop")
GB = 1e9
SNAPSHOT_VIEWER = "https://pytorch.org/memory_viz"
_HWM = re.compile(rb"^VmHWM:\s+(\d+)\s*kB", re.MULTILINE)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its present RSS (Linux: ``5`` written to
    ``/proc/self/clear_refs``); False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """This process's peak RSS since the last reset (``VmHWM``), else since it started."""
    try:
        with open("/proc/self/status", "rb") as file:
            found = _HWM.search(file.read())
        if found is not None:
            return int(found.group(1)) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes there, kB elsewhere


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def reset_peaks() -> bool:
    """At an epoch's start: the peaks start again from what is held now. Returns
    whether the process's peak RSS could be reset."""
    if _cuda_in_use():
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)  # host-side counters: no sync
    return reset_peak_rss()


def epoch_peaks() -> dict[str, float]:
    """The peaks since :func:`reset_peaks`, in GB: the process's RSS, and each GPU's
    memory as the caching allocator held it (allocated to tensors, reserved)."""
    peaks = {"epoch_peak_rss_gb": peak_rss_bytes() / GB}
    if _cuda_in_use():
        for i in range(torch.cuda.device_count()):
            peaks[f"gpu{i}_epoch_peak_allocated_gb"] = torch.cuda.max_memory_allocated(i) / GB
            peaks[f"gpu{i}_epoch_peak_reserved_gb"] = torch.cuda.max_memory_reserved(i) / GB
    return peaks


def record_history(max_entries: int) -> bool:
    """Record the CUDA allocator's history (each allocation's stack) from now on, the
    newest ``max_entries`` events; False without CUDA."""
    if not torch.cuda.is_available():
        return False
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    return True


def stop_history() -> None:
    if torch.cuda.is_available():
        torch.cuda.memory._record_memory_history(enabled=None)


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, also when another error wraps it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, torch.OutOfMemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def write_snapshot(path: str, context: dict[str, Any]) -> str:
    """The allocator's snapshot (``torch.cuda.memory._snapshot()``: its segments and,
    when recorded, the history of allocations) pickled to ``path``, as
    ``torch.cuda.memory._dump_snapshot`` does, with ``context`` under ``"evloop"``
    (what failed, where). Without CUDA the snapshot has no segments. Returns ``path``."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        snapshot: dict[str, Any] = torch.cuda.memory._snapshot()
    else:
        snapshot = {"segments": [], "device_traces": []}
    snapshot["evloop"] = context
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "wb") as file:
        pickle.dump(snapshot, file)
    os.replace(partial, path)
    return path
