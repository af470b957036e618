"""arun inside real asyncio and trio apps; cancellation mid-epoch."""

import threading
import time

import anyio
import pytest
import torch
from helpers import linear_recipe, make_batches

import evloop.callbacks as ecb
from evloop import Recipe, Subscriber
from evloop.events import BatchEnded, RunFinished


def _slow_recipe(n_batches=400, step_s=0.002):
    def forward(batch):
        time.sleep(step_s)  # stands in for GPU work: releases the GIL like kernels do
        return {"value": torch.tensor(float(batch))}

    recipe = Recipe(forward, range(n_batches))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.EpochMetricAvg("value")])
    return recipe


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_arun_keeps_the_event_loop_responsive(backend):
    recipe = _slow_recipe(200)
    ticks = []
    received = []
    recipe.bus.subscribe(received.append, types=[BatchEnded], policy="block")

    async def ticker():
        while True:
            ticks.append(recipe.progress.iters)  # the training step at each tick
            await anyio.sleep(0.001)

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            state = await recipe.arun(1)
            tg.cancel_scope.cancel()
        return state

    state = anyio.run(main, backend=backend)
    assert state["iters"] == 199 and len(received) == 200
    # Counted in training steps, not seconds (a busy machine stalls both alike): the
    # app ticked all along, never more than a few steps apart.
    during = [i for i in ticks if 0 <= i < 199]
    assert len(set(during)) > 100
    assert max(b - a for a, b in zip(ticks, ticks[1:], strict=False)) <= 25


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cancelling_arun_stops_at_a_batch_boundary_and_ends_cleanly(backend):
    recipe = _slow_recipe(10_000)
    lossless = []
    seen_in_batch = []

    class Lossless(Subscriber):
        policy = "block"

        def handle(self, event):
            lossless.append(event)

    class BatchWatch:
        def on_batch_start(self, state):
            seen_in_batch.append(("start", state["iters"]))

        def on_batch_end(self, state):
            seen_in_batch.append(("end", state["iters"]))

    recipe.callbacks.add_callbacks([Lossless(), BatchWatch()])

    async def main():
        with anyio.move_on_after(0.3):
            await recipe.arun(3)
        return "returned"

    assert anyio.run(main, backend=backend) == "returned"
    assert 0 < recipe.progress.iters < 10_000
    assert seen_in_batch[-1] == ("end", recipe.progress.iters)  # the last batch completed
    assert isinstance(lossless[-1], RunFinished) and lossless[-1].stopped
    batches = [e.iters for e in lossless if isinstance(e, BatchEnded)]
    assert batches == list(range(recipe.progress.iters + 1))
    assert not recipe.running


def test_a_second_concurrent_arun_is_refused():
    recipe = _slow_recipe(100_000)

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(recipe.arun, 1)
            with anyio.fail_after(10):  # the first run has started
                while recipe.progress.iters < 1:
                    await anyio.sleep(0.001)
            with pytest.raises(RuntimeError, match="already running"):
                await recipe.arun(1)
            tg.cancel_scope.cancel()  # and the first one ends when cancelled

    anyio.run(main)


def test_stop_from_another_thread():
    recipe = _slow_recipe(10_000)
    timer = threading.Timer(0.1, recipe.stop)
    timer.start()
    recipe.run(1)
    assert 0 < recipe.progress.iters < 10_000


def test_nested_run_from_inside_a_training_step():
    inner = linear_recipe(make_batches(3))
    outer = Recipe(lambda b: {"inner_iters": inner.run(1)["iters"]}, range(2))
    state = outer.run(1)
    assert state["inner_iters"] == 5


def test_the_training_thread_of_an_arun_ends_with_the_run():
    """In a long-lived async app, no thread is left behind by each finished run."""

    async def app():
        before = set(threading.enumerate())
        for _ in range(3):
            await Recipe(lambda b: None, range(5)).arun(1)
        slow = Recipe(lambda b: time.sleep(0.01), range(100_000))
        with anyio.move_on_after(0.2):  # a cancelled run too
            await slow.arun(1)
        deadline = time.monotonic() + 10
        while set(threading.enumerate()) - before and time.monotonic() < deadline:
            await anyio.sleep(0.01)
        return [t.name for t in set(threading.enumerate()) - before]

    assert anyio.run(app) == []
