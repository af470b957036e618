"""Offload: subscribers run in a process of their own, fed through a real pipe."""

import json
import os
import signal
import time

import pytest
import torch
from helpers import make_batches

import evloop.callbacks as ecb
from evloop import Recipe, Subscriber
from evloop.events import BatchEnded, RunFinished, SubscriberFailed


class Recorder(Subscriber):
    """Writes, at its end, the process it ran in and the events it got."""

    policy = "block"
    types = (BatchEnded, RunFinished)

    def __init__(self, path):
        self.path = path
        self.seen = []

    def handle(self, event):
        self.seen.append([type(event).__name__, getattr(event, "iters", None)])

    def finish(self):
        with open(self.path, "w") as file:
            json.dump({"pid": os.getpid(), "seen": self.seen}, file)


class ExitsAtStep(Subscriber):
    types = (BatchEnded,)

    def __init__(self, step):
        self.step = step

    def handle(self, event):
        if event.iters >= self.step:
            os._exit(3)


def _recipe(steps=200, pause=0.0):
    def step(batch):
        time.sleep(pause)
        return {"loss": batch[0].sum()}

    return Recipe(step, make_batches(steps))


def test_an_offloaded_subscriber_runs_in_a_child_and_gets_every_event(tmp_path):
    path = tmp_path / "seen.json"
    recipe = _recipe()
    offloaded = ecb.Offload(Recorder(str(path)))
    recipe.callbacks.add_callback(offloaded)
    recipe.run(1)
    record = json.loads(path.read_text())
    assert record["pid"] != os.getpid()
    assert record["seen"][:-1] == [["BatchEnded", i] for i in range(200)]  # lossless
    assert record["seen"][-1] == ["RunFinished", 199]
    assert offloaded.sent == 201 and offloaded.process is None  # it ended with the run


def test_an_offloaded_stdout_logger_prints_to_this_process_stdout(capfd):
    recipe = _recipe(100)
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.EpochMetricAvg("loss"), ecb.Offload(ecb.StdoutLogger(log_every=-1))]
    )
    recipe.run(2)
    out = capfd.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in out] == ["Ep. 1/2 It 100", "Ep. 2/2 It 100"]
    assert out[-1].startswith("Ep. 2/2 It 100 | loss=")


def test_a_child_that_dies_is_reported_and_training_goes_on():
    failures = []

    def step(batch):
        if len(failures) == 0:  # until the child died and that was reported
            time.sleep(0.005)

    recipe = Recipe(step, make_batches(5000))
    recipe.bus.subscribe(failures.append, types=[SubscriberFailed])
    recipe.callbacks.add_callback(ecb.Offload(ExitsAtStep(20)))
    recipe.run(1)
    assert recipe.progress.iters == 4999
    assert len(failures) == 1
    assert failures[0].subscriber == "Offload[ExitsAtStep]"
    assert "exited with code 3" in failures[0].error


def test_what_cannot_reach_another_process_is_refused_at_once():
    with open(os.devnull, "w") as stream, pytest.raises(TypeError, match="cannot be pickled"):
        ecb.Offload(ecb.StdoutLogger(stream=stream))
    with pytest.raises(TypeError, match="runs a Subscriber"):
        ecb.Offload(print)
    with pytest.raises(ValueError, match="must be positive, got 0 and 30"):
        ecb.Offload(Recorder("x"), start_timeout=0)


def test_a_subscriber_the_child_cannot_load_fails_the_run_before_training(tmp_path, capfd):
    module = tmp_path / "gone_module.py"
    module.write_text("from evloop import Subscriber\nclass Gone(Subscriber):\n    pass\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        import gone_module

        offloaded = ecb.Offload(gone_module.Gone())
    finally:
        sys.path.remove(str(tmp_path))
    module.unlink()  # the child will not find it
    recipe = _recipe(10)
    recipe.callbacks.add_callback(offloaded)
    with pytest.raises(RuntimeError, match=r"Offload\[Gone\]: .*could not start: it exited"):
        recipe.run(1)
    assert recipe.progress.iters == -1  # no step was taken
    err = capfd.readouterr().err
    assert err.count("No module named 'gone_module'") == 1  # the child's own error, once


class Stuck(Subscriber):
    """Never returns from its last event."""

    types = (RunFinished,)
    policy = "block"

    def handle(self, event):
        time.sleep(3600)


def test_a_child_stuck_at_the_end_is_killed_after_its_deadline(caplog):
    recipe = _recipe(20)
    offloaded = ecb.Offload(Stuck(), finish_timeout=2)
    recipe.callbacks.add_callback(offloaded)
    recipe.run(1)
    assert "did not end within 2 s of the run's end: killed" in caplog.text
    assert offloaded.process is None


class SlowToFinish(Recorder):
    def finish(self):
        time.sleep(7)  # longer than the run's drain deadline for lossy subscribers (5 s)
        super().finish()


def test_the_run_waits_for_a_child_finishing_past_the_drain_deadline(tmp_path):
    path = tmp_path / "seen.json"
    recipe = _recipe(30)
    recipe.callbacks.add_callback(ecb.Offload(SlowToFinish(str(path))))
    recipe.run(1)
    assert json.loads(path.read_text())["seen"][-1] == ["RunFinished", 29]


class StopsReading(Subscriber):
    """Stops reading its pipe at its first event: the parent's writes fill it."""

    policy = "block"
    maxsize = 100_000  # training never waits for it: the parent's writer does
    types = (BatchEnded,)

    def handle(self, event):
        time.sleep(3600)


def test_a_child_that_stops_reading_is_killed_when_the_run_gives_up_on_it():
    children = []

    def step(batch):
        if offloaded.process is not None and not children:
            children.append(offloaded.process)
        time.sleep(0.001)  # many deliveries: the child reads the first ones, then stops
        return {"loss": batch[0].sum(), "weights": torch.zeros(2048)}  # 8 KiB a step

    recipe = Recipe(step, make_batches(500))
    recipe.drain_lossless_s = 1.0
    failures = []
    recipe.bus.subscribe(failures.append, types=[SubscriberFailed])
    offloaded = ecb.Offload(StopsReading())
    recipe.callbacks.add_callbacks([ecb.Log("weights", "weights"), offloaded])
    recipe.run(1)
    assert [f.subscriber for f in failures] == ["Offload[StopsReading]"]
    assert "abandoned" in failures[0].error
    (child,) = children
    assert child.returncode == -signal.SIGKILL  # killed and reaped: it does not outlive the run
    assert offloaded.process is None
