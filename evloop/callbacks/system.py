"""SystemMetrics: resource use sampled by a thread of its own, never the training
thread, and published as events (charts on the dashboard, lines in the log)."""

from __future__ import annotations

import logging
import os
import resource
import threading
from typing import Any

import torch

from .. import context
from ..context import RunContext
from ..events import SystemSampled

__all__ = ["SystemMetrics"]

log = logging.getLogger("evloop")
GB = 1e9


class SystemMetrics:
    """Every ``every_s`` seconds while a top-level run trains: the CPU use and memory
    of the machine and of this process (``psutil``, the ``system`` extra; without it,
    the process's peak memory only), each visible GPU's memory as PyTorch holds it
    (``torch.cuda``: host-side counters, no sync) and, with ``nvidia-ml-py``, its
    utilisation and memory as the driver sees them. Rank 0 of a distributed run
    publishes them, like every event."""

    def __init__(self, every_s: float = 1.0) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be positive, got {every_s}")
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probes = _Probes()

    def on_run_start(self, state: dict[str, Any]) -> None:
        run = context.current()
        if run.nested:
            return
        if self._thread is not None:  # the last run failed: its sampler ends by itself
            self._stop_sampler()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._sample_until_stopped, args=(run,), name="evloop-system", daemon=True
        )
        self._thread.start()

    def on_run_end(self, state: dict[str, Any]) -> None:
        if self._thread is None or context.current().nested:
            return
        self._stop_sampler()

    def _stop_sampler(self) -> None:
        assert self._thread is not None
        self._stop.set()
        deadline = 5 * self.every_s + 1
        self._thread.join(timeout=deadline)
        if self._thread.is_alive():  # a sample stuck in a driver call: it is a daemon
            log.warning("SystemMetrics: the sampler did not stop within %.0f s", deadline)
        self._thread = None

    def _sample_until_stopped(self, run: RunContext) -> None:
        # a run that failed never reaches on_run_end: its end stops the sampler too
        while not self._stop.wait(self.every_s) and run.recipe.running:
            try:
                metrics = self._probes.sample()
            except Exception as error:  # a probe that broke: said once, then left out
                log.warning("SystemMetrics stopped sampling: %r", error)
                return
            kinds = dict.fromkeys(metrics, "scalar")
            run.publish(SystemSampled(step=run.progress.iters, metrics=metrics, kinds=kinds))
            run.bus.flush(force=True)


class _Probes:
    """What this machine can tell, found once."""

    def __init__(self) -> None:
        self.process: Any = None
        self.psutil: Any = None
        try:
            import psutil

            self.psutil, self.process = psutil, psutil.Process(os.getpid())
            self.process.cpu_percent(None)  # the first reading is always 0
        except ImportError:
            log.info("SystemMetrics: install evloop[system] (psutil) for CPU and RAM use")
        self.nvml = _nvml_handles()

    def sample(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.psutil is not None:
            memory = self.psutil.virtual_memory()
            metrics["cpu_percent"] = self.psutil.cpu_percent(None)
            metrics["process_cpu_percent"] = self.process.cpu_percent(None)
            metrics["ram_used_gb"] = memory.used / GB
            metrics["ram_percent"] = memory.percent
            metrics["process_rss_gb"] = self.process.memory_info().rss / GB
        else:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            metrics["process_peak_rss_gb"] = peak_kb * 1024 / GB
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i in range(torch.cuda.device_count()):
                metrics[f"gpu{i}_allocated_gb"] = torch.cuda.memory_allocated(i) / GB
                metrics[f"gpu{i}_reserved_gb"] = torch.cuda.memory_reserved(i) / GB
        for i, handle in enumerate(self.nvml):
            import pynvml

            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            metrics[f"gpu{i}_util_percent"] = float(rates.gpu)
            metrics[f"gpu{i}_used_gb"] = memory.used / GB
        return metrics


def _nvml_handles() -> list[Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no library, no driver, no GPU: nothing to read
        return []
