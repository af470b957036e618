"""SystemMetrics: resource use sampled by a thread of its own, in the log and on the bus."""

import json
import threading

import pytest

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
