"""SystemMetrics: resource use sampled by a thread of its own, never the training
thread, and published as events (charts on the dashboard, lines in the log)."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
from typing import Any

import torch

from .. import context
from ..context import RunContext
from ..events import SystemSampled
from . import _memory

__all__ = ["SystemMetrics"]

log = logging.getLogger("evloop")
GB = 1e9


class SystemMetrics:
    """Every ``every_s`` seconds while a top-level run trains: the CPU use and memory
    of the machine and of this process (``psutil``, the ``system`` extra; without it,
    the process's peak memory only), each visible GPU's memory as PyTorch holds it
    (``torch.cuda``: host-side counters, no sync) and, with ``nvidia-ml-py``, its
    utilisation and memory as the driver sees them. Rank 0 of a distributed run
    publishes them, like every event.

    At each epoch's end, the epoch's peaks: ``epoch_peak_rss_gb``, this process's
    peak resident memory (reset at each epoch's start on Linux; elsewhere the peak
    since the process started), and on CUDA ``gpu<i>_epoch_peak_allocated_gb`` and
    ``gpu<i>_epoch_peak_reserved_gb``, the caching allocator's peaks (reset at each
    epoch's start). DataLoader workers are processes of their own: not counted.

    When the run fails with CUDA's out-of-memory error, the allocator's snapshot is
    pickled to ``snapshot_dir`` (default: the run folder, that of the recipe's
    ``JsonlWriter``, else the current directory) as
    ``memory_snapshot_<iteration>[_rank<r>].pickle``, and the error raised says where
    (a note); open it at https://pytorch.org/memory_viz. With ``memory_history``
    (a number of allocator events, e.g. 100_000), the allocator records each
    allocation and its stack from the run's start, and the snapshot holds that
    history: what held the memory, not only how much (it costs some speed; off by
    default)."""

    def __init__(
        self,
        every_s: float = 1.0,
        *,
        memory_history: int = 0,
        snapshot_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be positive, got {every_s}")
        if isinstance(memory_history, bool) or not isinstance(memory_history, int):
            raise TypeError(
                f"memory_history is a number of allocator events (e.g. 100_000), "
                f"got {memory_history!r}"
            )
        if memory_history < 0:
            raise ValueError(f"memory_history must be 0 (off) or more, got {memory_history}")
        self.every_s = every_s
        self.memory_history = memory_history
        self.snapshot_dir = None if snapshot_dir is None else os.fspath(snapshot_dir)
        self.last_snapshot: str | None = None
        """The memory snapshot written at the last out-of-memory failure (None: none)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probes = _Probes()
        self._recording = False
        self._said_no_reset = False

    def on_run_start(self, state: dict[str, Any]) -> None:
        run = context.current()
        if run.nested:
            return
        if self.memory_history:
            self._recording = _memory.record_history(self.memory_history)
        self._reset_peaks()
        if self._thread is not None:  # the last run failed: its sampler ends by itself
            self._stop_sampler()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._sample_until_stopped, args=(run,), name="evloop-system", daemon=True
        )
        self._thread.start()

    def on_run_end(self, state: dict[str, Any]) -> None:
        if context.current().nested:
            return
        self._stop_history()
        if self._thread is not None:
            self._stop_sampler()

    def on_epoch_start(self, state: dict[str, Any]) -> None:
        if not context.current().nested:
            self._reset_peaks()

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        run = context.current()
        if run.nested:
            return
        peaks = _memory.epoch_peaks()
        kinds = dict.fromkeys(peaks, "scalar")
        run.publish(SystemSampled(step=run.progress.iters, metrics=peaks, kinds=kinds))

    def on_run_failed(self, state: dict[str, Any], error: BaseException) -> None:
        """CUDA out of memory: the snapshot, named in a note of ``error``."""
        run = context.current()
        if run.nested or getattr(error, "_evloop_snapshot", False):
            return
        try:
            if _memory.is_out_of_memory(error):
                with contextlib.suppress(AttributeError, TypeError):  # once per error
                    error._evloop_snapshot = True  # type: ignore[attr-defined]
                error.add_note(self._snapshot(run, error))
        finally:
            self._stop_history()

    def _snapshot(self, run: RunContext, error: BaseException) -> str:
        iters, rank = run.progress.iters, run.world.rank
        name = f"memory_snapshot_{iters}" + (f"_rank{rank}" if run.world.distributed else "")
        path = os.path.join(self._snapshot_dir(run), name + ".pickle")
        where = {"iters": iters, "epoch": run.progress.epoch, "rank": rank, "error": repr(error)}
        where["history"] = self._recording
        try:
            self.last_snapshot = _memory.write_snapshot(path, where)
        except Exception as failure:  # a full disk: said in the note, the OOM stays the error
            return f"evloop: the memory snapshot could not be written to {path}: {failure!r}"
        history = (
            ""
            if self._recording
            else " (no allocation history: SystemMetrics(memory_history=100_000) records it)"
        )
        return (
            f"evloop: CUDA memory snapshot at iteration {iters}: {path}{history}; "
            f"open it at {_memory.SNAPSHOT_VIEWER}"
        )

    def _snapshot_dir(self, run: RunContext) -> str:
        if self.snapshot_dir is not None:
            return self.snapshot_dir
        from ..loggers.jsonl import JsonlWriter

        for callback in run.recipe.callbacks.callbacks():
            if isinstance(callback, JsonlWriter):
                return os.path.dirname(callback.path) or "."
        return "."

    def _reset_peaks(self) -> None:
        if not _memory.reset_peaks() and not self._said_no_reset:
            self._said_no_reset = True
            log.info("SystemMetrics: epoch_peak_rss_gb is the peak since the process started here")

    def _stop_history(self) -> None:
        if self._recording:
            self._recording = False
            _memory.stop_history()

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
