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

    def handle(self, event):
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
    deadline = time.monotonic() + 30
    while len(stuck_sub.mailbox) < stuck.maxsize and time.monotonic() < deadline:
        time.sleep(0.01)  # training now waits for room
    iters = recipe.progress.iters
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
