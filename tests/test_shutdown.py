"""Nothing hangs: stuck subscribers are abandoned within deadlines and reported, and
one Ctrl-C always ends the run."""

import signal
import subprocess
import sys
import textwrap
import threading
import time

import anyio
import pytest

from evloop import Recipe, Subscriber
from evloop.events import BatchEnded, SubscriberFailed


class StuckInAThread(Subscriber):
    """A writer whose disk never answers (blocking I/O that never returns)."""

    policy = "block"
    blocking = True

    def __init__(self, maxsize=1000):
        self.maxsize = maxsize
        self.never = threading.Event()
        self.entered = threading.Event()

    def handle(self, event):
        self.entered.set()
        self.never.wait()


class AwaitsForever(Subscriber):
    policy = "latest"

    async def handle(self, event):
        await anyio.sleep(3600)


def _run_with(stuck, n=10, **deadlines):
    recipe = Recipe(lambda b: None, range(n))
    for name, value in deadlines.items():
        setattr(recipe, name, value)
    failures = []
    recipe.bus.subscribe(failures.append, types=[SubscriberFailed])
    recipe.callbacks.add_callback(stuck)
    start = time.monotonic()
    recipe.run(1)
    return time.monotonic() - start, failures


def test_a_subscriber_stuck_in_blocking_io_is_abandoned_after_its_deadline():
    took, failures = _run_with(StuckInAThread(), drain_lossless_s=1.0)
    assert took < 5
    assert [f.subscriber for f in failures] == ["StuckInAThread"]
    assert "did not finish within 1 s after the run ended" in failures[0].error


def test_an_async_subscriber_awaiting_forever_is_abandoned_after_its_deadline():
    took, failures = _run_with(AwaitsForever(), drain_lossy_s=1.0)
    assert took < 5
    assert "did not finish within 1 s" in failures[0].error


def test_a_slow_display_subscriber_does_not_hold_the_run_for_minutes():
    class TenSecondsAnEvent(Subscriber):
        policy = "latest"
        blocking = True

        def handle(self, event):
            time.sleep(10)

    took, failures = _run_with(TenSecondsAnEvent(), n=300, drain_lossy_s=1.0)
    assert took < 5 and "abandoned" in failures[0].error


def test_stop_frees_training_held_by_a_stuck_lossless_subscriber():
    stuck = StuckInAThread(maxsize=16)
    recipe = Recipe(lambda b: None, range(1000))
    recipe.bus.stall_s = 0.5
    recipe.drain_lossless_s = 1.0
    failures = []
    recipe.bus.subscribe(failures.append, types=[SubscriberFailed])
    stuck_sub = recipe.bus.subscribe(stuck, types=[BatchEnded], policy="block")
    thread = threading.Thread(target=recipe.run, args=(1,))
    thread.start()
    assert stuck.entered.wait(30), "the subscriber never got its first event"
    deadline = time.monotonic() + 30  # its mailbox refills behind what it holds
    while len(stuck_sub.mailbox) < stuck.maxsize and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(stuck_sub.mailbox) == stuck.maxsize, "the mailbox never filled"
    iters = recipe.progress.iters  # training now waits for room
    time.sleep(0.3)
    assert recipe.progress.iters == iters  # it really waits: lossless
    recipe.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert "while the run was stopping" in failures[0].error
    assert recipe.progress.iters < 999


SCRIPT = textwrap.dedent(
    """
    import threading, time
    from evloop import Recipe, Subscriber

    class Stuck(Subscriber):
        policy = "block"
        blocking = True

        def handle(self, event):
            threading.Event().wait()

    def step(batch):
        if batch == 5:  # training, and the stuck subscriber has events
            print("training", flush=True)
        time.sleep(0.01)

    recipe = Recipe(step, range(100_000))
    recipe.drain_lossless_s = 2.0
    recipe.callbacks.add_callback(Stuck())
    recipe.run(1)
    """
)


@pytest.mark.slow
def test_one_ctrl_c_ends_a_run_whose_subscriber_is_stuck():
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "training"
        start = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        process.kill()
    assert process.returncode != 0  # KeyboardInterrupt, after a clean end
    assert took < 20
    assert "did not finish within 2 s" in errors
    assert "KeyboardInterrupt: training interrupted at epoch 0" in errors


class FreedSlowly:
    """Takes a while to free, as a big tensor does; says when it is gone."""

    def __init__(self, freed: threading.Event):
        self.freed = freed

    def __del__(self):
        time.sleep(0.2)
        self.freed.set()


# A daemon thread that frees a tensor while the interpreter shuts down aborts the
# process ("terminate called without an active exception"): once a background thread
# says it finished, what it worked on must already be released.


def test_a_checkpoint_writer_frees_its_snapshot_before_saying_it_is_written(tmp_path):
    from evloop.callbacks._checkpoint_writer import Job, Writer

    freed = threading.Event()
    writer = Writer(10.0, write=lambda job: None, failed=lambda job, error: None)
    snapshot = FreedSlowly(freed)
    writer.put(Job(str(tmp_path / "c.pth"), snapshot, {}, [], lambda e: None, False, 0.0))
    del snapshot
    writer.wait()
    assert freed.is_set()


def test_a_worker_call_holds_its_arguments_no_longer_than_its_awaiter():
    from evloop.worker import DaemonWorker

    freed = threading.Event()

    async def main():
        worker = DaemonWorker("evloop-test-worker")
        assert await worker.run(lambda held: 3, FreedSlowly(freed)) == 3
        assert freed.is_set()
        worker.submit(lambda held: 1 / 0, FreedSlowly(freed2), done=told.set)
        assert told.wait(10)
        assert freed2.is_set()  # freed before done(), even when the call raised

    freed2, told = threading.Event(), threading.Event()
    anyio.run(main)


def test_the_training_thread_has_ended_when_a_run_returns():
    recipe = Recipe(lambda b: None, range(3))
    recipe.run(1)
    assert not [t for t in threading.enumerate() if t.name == "evloop-train"]


_thread_own = threading.local()


@pytest.mark.parametrize("join_s", [10.0, 0.05])
def test_the_training_threads_last_frees_are_waited_for_or_reported(join_s, monkeypatch, caplog):
    from evloop import lifecycle

    monkeypatch.setattr(lifecycle, "JOIN_S", join_s)
    freed = threading.Event()

    def work():  # leaves something slow to free at the thread's very end
        _thread_own.held = FreedSlowly(freed)

    anyio.run(lifecycle.in_own_thread, work)
    if join_s > 1:
        assert freed.is_set()  # freed before in_own_thread returned
        assert "had not returned" not in caplog.text
    else:
        assert "thread evloop-train had not returned 0 s after its work ended" in caplog.text
        assert freed.wait(10)
