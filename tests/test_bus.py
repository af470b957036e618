"""The async lane under stalled, slow and failing subscribers, with real threads and loops."""

import asyncio
import fcntl
import io
import os
import threading
import time

import anyio
import pytest

import evloop.mailbox as mailbox_module
from evloop import Recipe, Subscriber
from evloop.callbacks import Counter, StdoutLogger
from evloop.events import (
    BatchEnded,
    EpochEnded,
    RunFinished,
    RunStarted,
    SubscriberDropped,
    SubscriberFailed,
)

N = 200


def _recipe(n=N):
    recipe = Recipe(lambda b: {}, range(n))
    return recipe


class Stalled(Subscriber):
    """Blocks on its first event until training has published everything."""

    types = (BatchEnded, RunFinished, EpochEnded)

    def __init__(self, policy, maxsize, release):
        self.policy = policy
        self.maxsize = maxsize
        self.release = release
        self.received = []

    async def handle(self, event):
        if not self.received:
            while not self.release.is_set():
                await anyio.sleep(0.005)
        self.received.append(event)


class Watch:
    """Ordered-lane callback recording the buffer length seen by the training thread."""

    def __init__(self, recipe, subscriber, release):
        self.recipe, self.subscriber, self.release = recipe, subscriber, release
        self.max_buffered = 0

    def on_batch_end(self, state):
        sub = next(s for s in self.recipe.bus.subscriptions if s.owner is self.subscriber)
        self.max_buffered = max(self.max_buffered, len(sub))

    def on_epoch_end(self, state):
        self.release.set()


def _run_stalled(policy, maxsize=8):
    release = threading.Event()
    recipe = _recipe()
    stalled = Stalled(policy, maxsize, release)
    reports = []
    recipe.callbacks.add_callback(stalled)
    watch = Watch(recipe, stalled, release)
    recipe.callbacks.add_callback(watch)
    recipe.bus.subscribe(reports.append, types=[SubscriberDropped])
    recipe.run(1)
    return stalled, watch, reports


def test_drop_oldest_stays_bounded_and_reports_every_drop():
    stalled, watch, reports = _run_stalled("drop_oldest")
    assert watch.max_buffered <= 8
    batches = [e for e in stalled.received if isinstance(e, BatchEnded)]
    dropped = sum(r.dropped for r in reports if r.subscriber == "Stalled")
    assert dropped > 0 and len(batches) + dropped == N
    assert reports[-1].total == dropped
    assert batches[-1].iters == N - 1  # the newest survive
    assert isinstance(stalled.received[-1], RunFinished)


def test_latest_coalesces_per_step_events_but_keeps_lifecycle_events():
    stalled, watch, reports = _run_stalled("latest")
    assert watch.max_buffered <= 8
    kinds = [type(e) for e in stalled.received]
    assert EpochEnded in kinds and kinds[-1] is RunFinished
    batches = [e for e in stalled.received if isinstance(e, BatchEnded)]
    assert len(batches) <= 3 and batches[-1].iters == N - 1
    dropped = sum(r.dropped for r in reports if r.subscriber == "Stalled")
    assert len(batches) + dropped == N


def test_block_is_lossless_and_makes_training_wait_within_the_bound():
    release = threading.Event()
    recipe = _recipe()

    class Slow(Subscriber):
        policy = "block"
        maxsize = 4
        types = (BatchEnded,)

        def __init__(self):
            self.received = []

        async def handle(self, event):
            await anyio.sleep(0.001)
            self.received.append(event.iters)

    slow = Slow()
    recipe.callbacks.add_callback(slow)
    watch = Watch(recipe, slow, release)
    recipe.callbacks.add_callback(watch)
    recipe.run(1)
    # every event arrived, in order, by the time run() returned
    assert slow.received == list(range(N))
    assert watch.max_buffered <= 4


def test_a_raising_subscriber_is_detached_and_reported_while_training_goes_on():
    recipe = _recipe(50)
    failures, others = [], []

    class Broken(Subscriber):
        types = (BatchEnded,)
        policy = "block"

        def __init__(self):
            self.calls = 0

        def handle(self, event):
            self.calls += 1
            if event.iters == 5:
                raise RuntimeError("logger exploded")

    broken = Broken()
    recipe.callbacks.add_callback(broken)
    recipe.bus.subscribe(failures.append, types=[SubscriberFailed])
    recipe.bus.subscribe(others.append, types=[BatchEnded], policy="block")
    state = recipe.run(2)
    assert recipe.progress.iters == 99 and state is recipe.state
    assert len(failures) == 1 and "logger exploded" in failures[0].error
    assert failures[0].subscriber == "Broken" and "RuntimeError" in failures[0].traceback
    assert broken.calls == 6  # detached after the failure
    assert len(others) == 100  # the other subscriber saw everything


def test_lossless_subscribers_consumed_everything_when_run_returns():
    recipe = _recipe(300)
    got = []

    def slow_sync(event):
        time.sleep(0.0002)
        got.append(event)

    recipe.bus.subscribe(slow_sync, policy="block", maxsize=1000)
    recipe.run(1)
    assert isinstance(got[0], RunStarted) and isinstance(got[-1], RunFinished)
    assert len([e for e in got if isinstance(e, BatchEnded)]) == 300


def test_blocking_subscribers_run_in_a_worker_thread():
    recipe = _recipe(20)
    threads = set()

    class FileLike(Subscriber):
        blocking = True
        policy = "block"

        def handle(self, event):
            threads.add(threading.get_ident())

    recipe.callbacks.add_callback(FileLike())
    recipe.run(1)
    assert threads and threading.get_ident() not in threads


def test_events_nobody_wants_are_not_built_and_do_not_wake_the_loop(monkeypatch):
    wakes = []
    real_call = mailbox_module.Waker.call

    def counting_call(self, fn):
        wakes.append(1)
        real_call(self, fn)

    monkeypatch.setattr(mailbox_module.Waker, "call", counting_call)
    built = []

    class CountedBatchEnded(BatchEnded, frozen=True, tag="counted_batch_ended"):
        def __post_init__(self):
            built.append(1)

    monkeypatch.setattr("evloop.loop.BatchEnded", CountedBatchEnded)

    recipe = _recipe(1000)
    every_100 = []
    recipe.bus.subscribe(every_100.append, types=[BatchEnded], every=100, policy="block")
    recipe.run(1)
    assert [e.iters for e in every_100] == list(range(0, 1000, 100))
    assert len(built) == 10
    assert len(wakes) <= 12  # at most one wake per delivered event, none for the others


def test_stream_yields_events_until_the_run_ends():
    recipe = _recipe(30)
    streamed = []

    async def main():
        async with anyio.create_task_group() as tg:

            async def watch():
                async for event in recipe.bus.stream(types=[BatchEnded, RunFinished]):
                    streamed.append(event)

            tg.start_soon(watch)
            with anyio.fail_after(10):  # the stream subscribed before the run starts
                while not recipe.bus.subscriptions:
                    await anyio.lowlevel.checkpoint()
            await recipe.arun(1)

    anyio.run(main)
    assert [e.iters for e in streamed[:-1]] == list(range(30))
    assert isinstance(streamed[-1], RunFinished)
    assert recipe.bus.subscriptions == ()  # the stream unsubscribed itself


def test_invalid_subscription_settings_are_rejected():
    recipe = _recipe(1)
    with pytest.raises(ValueError, match="policy"):
        recipe.bus.subscribe(print, policy="sometimes")
    with pytest.raises(ValueError, match="maxsize"):
        recipe.bus.subscribe(print, maxsize=-1)
    with pytest.raises(TypeError, match="callable"):
        recipe.bus.subscribe(42)


def test_the_gate_follows_subscriptions_as_they_change():
    bus = Recipe(lambda b: {}, range(1)).bus
    assert bus.gate(BatchEnded) == () and not bus.wants(BatchEnded, 0)
    every_10 = bus.subscribe(print, types=[BatchEnded], every=10)
    assert bus.gate(BatchEnded) == (10,)
    assert bus.wants(BatchEnded, 20) and not bus.wants(BatchEnded, 21)
    every_3 = bus.subscribe(print, types=[BatchEnded], every=3)
    assert bus.gate(BatchEnded) == (3, 10) and bus.wants(BatchEnded, 21)
    each = bus.subscribe(print, types=[BatchEnded])
    assert bus.gate(BatchEnded) == (1,) and bus.gate(RunStarted) == ()
    for subscription in (each, every_3):
        bus.unsubscribe(subscription)
    assert bus.gate(BatchEnded) == (10,)
    bus.muted = True
    assert bus.gate(BatchEnded) == ()
    bus.muted = False
    bus.unsubscribe(every_10)
    assert bus.gate(BatchEnded) == ()


def test_a_stream_opened_mid_run_gets_the_next_steps():
    """The training loop asks who listens only when subscriptions change: a watcher
    arriving late must still get every step from then on."""
    recipe = Recipe(lambda b: time.sleep(0.001), range(400))
    seen = []

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(recipe.arun, 1)
            with anyio.fail_after(30):
                while recipe.progress.iters < 50:
                    await anyio.sleep(0.005)
                async for event in recipe.bus.stream(types=[BatchEnded], policy="block"):
                    seen.append(event.iters)
                    if len(seen) == 20:
                        break

    anyio.run(main)
    assert len(seen) == 20 and seen[0] >= 50
    assert seen == list(range(seen[0], seen[0] + 20))


def test_a_failed_subscriber_no_longer_has_events_built_for_it(monkeypatch):
    built = []

    class CountedBatchEnded(BatchEnded, frozen=True, tag="counted_batch_ended"):
        def __post_init__(self):
            built.append(self.iters)

    monkeypatch.setattr("evloop.loop.BatchEnded", CountedBatchEnded)

    def broken(event):
        raise RuntimeError("broken")

    recipe = Recipe(lambda b: time.sleep(0.001), range(300))
    recipe.bus.subscribe(broken, types=[BatchEnded])
    recipe.run(1)
    assert 0 < len(built) < 300  # built until the failure was seen, not after


class LetsGo(Subscriber):
    """Records what it is told when the bus gives up on it."""

    types = (BatchEnded,)
    policy = "block"
    blocking = True

    def __init__(self, stuck):
        self.stuck = stuck
        self.detached_for = []
        self.finished = False

    def handle(self, event):
        if self.stuck:
            time.sleep(3600)
        raise ValueError("cannot write")

    def detached(self, reason):
        self.detached_for.append(reason)

    def finish(self):
        self.finished = True


@pytest.mark.parametrize("stuck", [False, True])
def test_a_subscriber_given_up_on_is_told_why_instead_of_finishing(stuck):
    recipe = _recipe(20)
    recipe.drain_lossless_s = 0.5
    subscriber = LetsGo(stuck)
    recipe.bus.subscribe(subscriber)
    recipe.run(1)
    (reason,) = subscriber.detached_for
    assert ("abandoned" in reason) if stuck else (reason == "ValueError('cannot write')")
    assert not subscriber.finished


class SlowStream(io.StringIO):
    """A terminal or pipe that takes 5 ms per write."""

    writes = 0

    def write(self, text):
        time.sleep(0.005)
        self.writes += 1
        return super().write(text)


def test_a_slow_display_logger_is_handed_events_once_per_tick_and_writes_once_each():
    stream = SlowStream()
    logger = StdoutLogger(log_every=1, stream=stream)
    recipe = Recipe(lambda b: time.sleep(0.0002), range(2000))
    recipe.callbacks.add_callback(logger)
    start = time.monotonic()
    recipe.run(1)
    elapsed = time.monotonic() - start
    subscription = next(s for s in recipe.bus.subscriptions if s.owner is logger)
    # never more deliveries than ticks (each delivery takes the interpreter lock)
    assert 0 < subscription.deliveries <= elapsed / recipe.bus.wake_interval + 2
    assert stream.writes <= subscription.deliveries + 1  # one write per delivery
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("Ep. 1/1 It 2000 | ")  # the newest values are never lost
    assert subscription.dropped > 0  # and what was skipped is counted


def test_a_display_logger_whose_stream_stops_being_read_holds_nothing():
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # full after a couple of lines
    stream = os.fdopen(write_end, "w")
    logger = StdoutLogger(log_every=1, prefix="x" * 1000, stream=stream)
    recipe = Recipe(lambda b: time.sleep(0.001), range(1000))
    recipe.drain_lossy_s = 0.5
    failures = []
    recipe.bus.subscribe(failures.append, types=[SubscriberFailed])
    recipe.callbacks.add_callback(logger)
    run = threading.Thread(target=recipe.run, args=(1,), daemon=True)
    try:
        run.start()
        run.join(60)
        assert not run.is_alive()  # neither training nor the run's end waited on the stream
        assert recipe.progress.iters == 999
        assert [f.subscriber for f in failures] == [logger.name]
        assert "abandoned" in failures[0].error
    finally:
        os.close(read_end)  # the stuck write fails and its thread ends


def test_a_blocking_subscribers_thread_ends_when_idle_and_comes_back(monkeypatch):
    monkeypatch.setattr("evloop.worker.WORKER_IDLE_S", 0.2)
    stream = io.StringIO()
    recipe = Recipe(lambda b: {}, range(20))
    recipe.callbacks.add_callback(StdoutLogger(log_every=-1, prefix="idle", stream=stream))

    def writer_threads():
        return [t for t in threading.enumerate() if t.name == "evloop-StdoutLogger[idle]"]

    for run in range(2):
        recipe.run(1)
        assert stream.getvalue().count("idle | Ep.") == run + 1
        deadline = time.monotonic() + 10
        while writer_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not writer_threads()  # no thread left behind by a recipe's loggers


def test_a_slow_plain_function_is_lossy_by_default_and_lossless_when_asked():
    """A plain callable gets a Subscriber's defaults: it never holds training back
    (per-step events coalesce, lifecycle events all arrive); block receives them all."""
    release = threading.Event()
    lossy, lossless = [], []

    async def slow(event):
        lossy.append(event)
        while not release.is_set():  # held until training is over
            await asyncio.sleep(0.001)

    recipe = Recipe(lambda b: None, range(600))
    recipe.callbacks.add_callback(Counter())
    default = recipe.bus.subscribe(slow, types=[BatchEnded, RunFinished])
    recipe.bus.subscribe(lossless.append, types=[BatchEnded, RunFinished], policy="block")

    class ReleaseAtTheEnd:
        def on_run_end(self, state):
            release.set()

    recipe.callbacks.add_callback(ReleaseAtTheEnd())
    recipe.run(1)
    assert default.policy == "latest" and default.mailbox.maxsize == 256
    assert default.dropped > 0  # coalesced while it was held: training went on
    assert isinstance(lossy[-1], RunFinished)
    assert [e.iters for e in lossless if isinstance(e, BatchEnded)] == list(range(600))
