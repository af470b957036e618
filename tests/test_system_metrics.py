"""SystemMetrics: resource use sampled by a thread of its own, in the log and on the bus."""

import json
import threading

import pytest
import torch

import evloop.callbacks as ecb
from evloop import Recipe, Subscriber
from evloop.events import SystemSampled


class CountSamples(Subscriber):
    types = (SystemSampled,)

    def __init__(self, wanted: int) -> None:
        self.wanted, self.seen = wanted, 0
        self.enough = threading.Event()

    def handle(self, event) -> None:
        self.seen += 1
        if self.seen >= self.wanted:
            self.enough.set()


def test_samples_come_from_a_thread_of_their_own_and_reach_the_log(tmp_path):
    counter = CountSamples(wanted=3)
    training_thread = []

    def forward(batch):
        training_thread.append(threading.get_ident())
        if batch == 10:  # training lasts until three samples were published, by construction
            assert counter.enough.wait(30), "no system samples within 30 s"

    recipe = Recipe(forward, range(20))
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.SystemMetrics(every_s=0.05),
            counter,
            ecb.JsonlWriter(tmp_path / "events.jsonl"),
        ]
    )
    recipe.run(1)
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").open()]
    samples = [line for line in lines if line["type"] == "system_sampled"]
    peak = samples.pop()  # the epoch's peak memory, at its end
    assert peak["step"] == 19 and 0.05 < peak["metrics"]["epoch_peak_rss_gb"] < 64
    assert len(samples) >= 3
    steps = [s["step"] for s in samples]
    assert steps == sorted(steps) and all(0 <= s <= 19 for s in steps)
    metrics = samples[-1]["metrics"]
    assert 0 <= metrics["cpu_percent"] <= 100
    assert 0.05 < metrics["process_rss_gb"] < 64  # this process, torch loaded
    assert 0 < metrics["ram_percent"] < 100
    assert samples[-1]["kinds"]["ram_used_gb"] == "scalar"
    assert not any(t.name == "evloop-system" for t in threading.enumerate())  # ended
    assert len(set(training_thread)) == 1


def test_the_interval_must_be_positive():
    with pytest.raises(ValueError, match="every_s must be positive"):
        ecb.SystemMetrics(every_s=0)


def test_without_psutil_the_process_peak_memory_is_still_sampled(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError("no psutil here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    from evloop.callbacks.system import _Probes

    metrics = _Probes().sample()
    assert "cpu_percent" not in metrics
    assert metrics["process_peak_rss_gb"] > 0.05


def test_the_sampler_ends_with_a_run_that_failed():
    import time

    counter = CountSamples(wanted=1)

    def forward(batch):
        if batch == 3:
            assert counter.enough.wait(30), "no system sample within 30 s"
            raise RuntimeError("planted failure")

    recipe = Recipe(forward, range(10))
    recipe.callbacks.add_callbacks([ecb.SystemMetrics(every_s=0.05), counter])
    with pytest.raises(RuntimeError, match="planted failure"):
        recipe.run(1)
    deadline = time.monotonic() + 10
    while any(t.name == "evloop-system" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the sampler outlived its failed run"
        time.sleep(0.02)


class Collect(Subscriber):
    types = (SystemSampled,)

    def __init__(self) -> None:
        self.events: list[SystemSampled] = []

    def handle(self, event) -> None:
        self.events.append(event)


def test_each_epoch_publishes_its_own_peak_memory():
    """The peak is reset at each epoch's start: an epoch that touched 300 MB peaks
    that much higher than the next one, which did not."""
    from evloop.callbacks._memory import reset_peak_rss

    if not reset_peak_rss():
        pytest.skip("this kernel cannot reset a process's peak RSS")
    collected = Collect()

    def forward(batch):
        if batch == (0, 0):  # epoch 1 only: touch 300 MB, then free them
            big = torch.ones(300 * 1024 * 1024, dtype=torch.uint8)
            del big

    loader = [(0, 0)]
    recipe = Recipe(forward, loader)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.SystemMetrics(every_s=60), collected])
    recipe.run(1)
    loader[0] = (1, 1)
    recipe.run(1)
    peaks = [e for e in collected.events if "epoch_peak_rss_gb" in e.metrics]
    assert [e.step for e in peaks] == [0, 1]
    first, second = (e.metrics["epoch_peak_rss_gb"] for e in peaks)
    assert first - second > 0.2, (first, second)
    assert peaks[0].kinds["epoch_peak_rss_gb"] == "scalar"


def _planted_oom(batch):
    if batch == 2:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (planted)")


def test_out_of_memory_writes_a_snapshot_into_the_run_folder_and_names_it(tmp_path):
    import pickle

    from evloop.codec import decode_json
    from evloop.events import RunFailed

    recipe = Recipe(_planted_oom, range(5))
    metrics = ecb.SystemMetrics(every_s=60)
    log = tmp_path / "run" / "events.jsonl"
    recipe.callbacks.add_callbacks([ecb.Counter(), metrics, ecb.JsonlWriter(log)])
    with pytest.raises(torch.OutOfMemoryError) as raised:
        recipe.run(1)
    path = tmp_path / "run" / "memory_snapshot_2.pickle"
    assert metrics.last_snapshot == str(path)
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert f"CUDA memory snapshot at iteration 2: {path}" in notes
    assert "memory_history=100_000" in notes  # no history was recorded: how to get one
    with path.open("rb") as file:
        snapshot = pickle.load(file)
    assert snapshot["segments"] == [] and snapshot["device_traces"] == []  # no CUDA here
    assert snapshot["evloop"]["iters"] == 2 and "planted" in snapshot["evloop"]["error"]
    failed = [decode_json(line) for line in log.read_bytes().splitlines()][-1]
    assert isinstance(failed, RunFailed)
    assert str(path) in failed.traceback  # the log's traceback names it too


def test_snapshot_dir_is_where_the_snapshot_goes_and_other_errors_write_none(tmp_path):
    recipe = Recipe(_planted_oom, range(5))
    metrics = ecb.SystemMetrics(every_s=60, snapshot_dir=tmp_path / "snaps")
    recipe.callbacks.add_callbacks([ecb.Counter(), metrics])
    with pytest.raises(torch.OutOfMemoryError):
        recipe.run(1)
    assert (tmp_path / "snaps" / "memory_snapshot_2.pickle").exists()

    def other(batch):
        raise RuntimeError("not memory")

    metrics.last_snapshot = None
    recipe = Recipe(other, range(5))
    recipe.callbacks.add_callbacks([ecb.SystemMetrics(every_s=60, snapshot_dir=tmp_path / "o")])
    with pytest.raises(RuntimeError, match="not memory"):
        recipe.run(1)
    assert not (tmp_path / "o").exists()


def test_a_wrapped_out_of_memory_error_is_one_too():
    from evloop.callbacks._memory import is_out_of_memory

    try:
        try:
            raise torch.OutOfMemoryError("planted")
        except torch.OutOfMemoryError as error:
            raise RuntimeError("the step failed") from error
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped)
    assert not is_out_of_memory(RuntimeError("not memory"))


def test_memory_history_is_a_number_of_events():
    with pytest.raises(TypeError, match="number of allocator events"):
        ecb.SystemMetrics(memory_history=True)
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        ecb.SystemMetrics(memory_history=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_real_cuda_out_of_memory_snapshot_holds_the_allocation_history(tmp_path):
    import pickle

    held = []

    def forward(batch):
        held.append(torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda"))
        if batch == 1:
            torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # a petabyte

    recipe = Recipe(forward, range(3))
    metrics = ecb.SystemMetrics(every_s=60, memory_history=10_000, snapshot_dir=tmp_path)
    recipe.callbacks.add_callbacks([ecb.Counter(), metrics])
    with pytest.raises(torch.OutOfMemoryError) as raised:
        recipe.run(1)
    assert "CUDA memory snapshot at iteration 1" in "\n".join(raised.value.__notes__)
    with open(metrics.last_snapshot, "rb") as file:
        snapshot = pickle.load(file)
    assert sum(s["total_size"] for s in snapshot["segments"]) >= 2 * 256 * 1024 * 1024
    traces = [t for device in snapshot["device_traces"] for t in device]
    assert any(t["action"] == "alloc" and t["size"] == 256 * 1024 * 1024 for t in traces)
    assert snapshot["evloop"]["history"] is True
    held.clear()
