"""The one mailbox and filter, as the bus's subscriptions and the server's clients use them."""

import threading
import time
from types import SimpleNamespace

import anyio
import pytest

from evloop.bus import Subscription
from evloop.events import BatchEnded, EpochEnded, RunFinished, RunStarted
from evloop.mailbox import Filter, Mailbox
from evloop.remote.connections import KEEP_ALL, Client


def _batch(i):
    return BatchEnded(epoch=0, iters=i, epoch_batch=i + 1, metrics={})


def test_drop_oldest_keeps_the_newest_and_counts_what_went():
    box = Mailbox(3, "drop_oldest")
    for i in range(5):
        box.put(i)
    assert box.take() == [2, 3, 4]
    assert box.dropped == 2 and box.new_drops() == 2 and box.new_drops() == 0


def test_latest_coalesces_keyed_items_and_keeps_the_others_in_order():
    box = Mailbox(10, "latest")
    box.put("run started")
    for i in range(3):
        box.put(f"batch {i}", key="batch")
    box.put("epoch ended")
    assert box.take() == ["run started", "batch 2", "epoch ended"]
    assert box.dropped == 2


def test_latest_keeps_everything_until_coalesce_after_then_coalesces():
    box = Mailbox(100, "latest", coalesce_after=3)
    for i in range(6):
        box.put(i, key="step")
    assert box.take() == [0, 1, 2, 5]


def test_close_on_overflow_refuses_everything_after():
    box = Mailbox(2, "latest", close_on_overflow=True)
    for i in range(3):
        box.put(i)
    assert box.overflowed and len(box) == 0
    box.put(99)
    assert box.take() == []


def test_block_makes_the_producer_wait_for_room():
    box = Mailbox(2, "block")
    box.put(1)
    box.put(2)
    flushes = []
    taken = []

    def consumer():
        time.sleep(0.2)
        taken.extend(box.take())

    threading.Thread(target=consumer).start()
    start = time.perf_counter()
    box.wait_for_room(lambda force: flushes.append(force))
    assert time.perf_counter() - start >= 0.15 and taken == [1, 2] and flushes


def test_a_consumer_sleeps_until_woken_from_another_thread():
    box = Mailbox(10, "block")
    got = []

    async def consumer():
        while not got:
            await box.wait()
            got.extend(box.take())

    def producer():
        time.sleep(0.1)
        if box.put("hello"):  # the consumer sleeps: it must be woken
            box.notify()

    threading.Thread(target=producer).start()
    anyio.run(consumer)
    assert got == ["hello"]


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="policy"):
        Mailbox(1, "sometimes")
    with pytest.raises(ValueError, match="maxsize"):
        Mailbox(0)
    with pytest.raises(ValueError, match="every"):
        Filter(every=0)


def test_the_filter_selects_types_steps_and_nested_sources():
    wanted = Filter.of([BatchEnded, RunFinished], every=10, nested=["test"])
    assert wanted.wants(_batch(20)) and not wanted.wants(_batch(21))
    assert not wanted.wants(RunStarted(epochs=1, epoch=0, iters=0))
    finished = RunFinished(epoch=0, iters=3, source="test")
    assert wanted.wants(finished, nested=True)
    other = RunFinished(epoch=0, iters=3, source="generator")
    assert not wanted.wants(other, nested=True)
    assert not Filter().wants(finished, nested=True)  # nested events only when asked


def test_filters_from_wire_names_ignore_unknown_names():
    wanted = Filter.from_tags(["batch_ended", "no_such_event"], every=2)
    assert wanted.types == (BatchEnded,)
    assert wanted.wants(_batch(4)) and not wanted.wants(_batch(5))
    assert Filter.from_tags(["no_such_event"]).types == ()


def test_bus_subscriptions_and_server_clients_share_the_mailbox():
    subscription = Subscription("logger", print, policy="latest", maxsize=8)
    assert isinstance(subscription.mailbox, Mailbox)
    for i in range(5):
        subscription.put(_batch(i), may_block=False, flush=lambda force: None)
    subscription.put(EpochEnded(epoch=0, iters=4, epoch_batch=5, metrics={}), False, print)
    assert [type(e).__name__ for e in subscription.mailbox.take()] == ["BatchEnded", "EpochEnded"]

    connection = SimpleNamespace(remote_address=("127.0.0.1", 50000))  # only its address is read
    client = Client(connection, fmt="json", wanted=Filter(), max_backlog=KEEP_ALL + 10)
    assert client.address == "127.0.0.1" and client.shared
    for i in range(KEEP_ALL + 50):  # per-step events: coalesced past KEEP_ALL
        client.outbox.put(i, key=BatchEnded)
    assert len(client.outbox) == KEEP_ALL + 1 and not client.too_slow
    for i in range(20):  # lifecycle events always queue: too many and it is let go
        client.outbox.put(("lifecycle", i))
    assert client.too_slow
