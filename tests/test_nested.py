"""Nested runs are plain calls: no event loop or thread of their own, events on the
outer run's bus tagged with their source."""

import asyncio
import contextlib
import io
import threading
import time

import pytest
import torch
from torch import nn

import evloop.callbacks as ecb
import evloop.recipes as erp
from evloop import Recipe, Subscriber
from evloop.events import BatchEnded, EvalFinished, RunFinished


@contextlib.contextmanager
def counting_loops_and_threads():
    """Counts asyncio event loops created and threads started in the block."""
    counts = {"loops": 0, "threads": []}
    loop_init = asyncio.BaseEventLoop.__init__
    thread_start = threading.Thread.start

    def new_loop(self, *args, **kwargs):
        counts["loops"] += 1
        loop_init(self, *args, **kwargs)

    def start(self):
        counts["threads"].append(self.name)
        thread_start(self)

    asyncio.BaseEventLoop.__init__ = new_loop
    threading.Thread.start = start
    try:
        yield counts
    finally:
        asyncio.BaseEventLoop.__init__ = loop_init
        threading.Thread.start = thread_start


def _batches(n):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)
    ]


def _train_and_test(test_takes_model):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train(batch):
        time.sleep(0.002)  # slower than an evaluation: none is skipped
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    def test_closing_over_the_model(batch):
        x, y = batch
        return {"loss": nn.functional.cross_entropy(model(x), y)}

    def test_taking_the_model(batch, model):
        x, y = batch
        return {"loss": nn.functional.cross_entropy(model(x), y)}

    test = test_taking_the_model if test_takes_model else test_closing_over_the_model
    recipe = erp.TrainAndTest(
        model, train, test, _batches(40), _batches(5), test_every=5, checkpoint=None
    )
    recipe.callbacks.add_callbacks([ecb.Optimizer(opt), ecb.EpochMetricAvg("loss")])
    recipe.test_loop.callbacks.add_callback(ecb.EpochMetricAvg("loss", post_each_batch=False))
    return recipe


def _call_recipe(recipe):
    return next(cb for cb in recipe.callbacks.callbacks() if isinstance(cb, ecb.CallRecipe))


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_train_and_test_run_starts_one_event_loop(concurrent):
    recipe = _train_and_test(test_takes_model=concurrent)
    printed = io.StringIO()
    with counting_loops_and_threads() as counts, contextlib.redirect_stdout(printed):
        recipe.run(1)
    assert counts["loops"] == 1  # the run's own; every evaluation ran without one
    assert counts["threads"].count("evloop-train") == 1  # the training thread, once
    assert [name for name in counts["threads"] if not name.startswith("evloop-")] == []
    # and each logger's writing thread, once, however many evaluations ran
    writers = sorted(n for n in counts["threads"] if n.startswith("evloop-StdoutLogger"))
    assert writers == ["evloop-StdoutLogger", "evloop-StdoutLogger[Test]"]
    evaluations = [name for name in counts["threads"] if name.startswith("evloop-eval")]
    ran = 9 - _call_recipe(recipe).skipped  # iterations 0, 5 … 35, and the final 39
    assert len(evaluations) == (1 if concurrent else 0)  # one thread for all evaluations
    # the test loop's own logger printed each evaluation, through the outer run's loop
    assert printed.getvalue().count("Test | ") == ran
    assert recipe.test_loop.callbacks.state["metrics"]["loss"] > 0


def test_nested_events_reach_the_outer_bus_tagged_with_their_source():
    inner = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(3))
    inner.callbacks.add_callback(ecb.Log("loss", "loss"))

    def outer_step(batch):
        inner.run(1)

    outer = Recipe(outer_step, range(4))
    outer.register("generator_loop", inner)
    own, everything, by_name = [], [], []
    outer.bus.subscribe(own.append, types=[BatchEnded], policy="block")
    outer.bus.subscribe(everything.append, types=[BatchEnded], nested=True, policy="block")
    outer.bus.subscribe(by_name.append, types=[RunFinished], nested=["generator_loop"])
    inner_own = []
    inner.bus.subscribe(inner_own.append, types=[BatchEnded], policy="block")
    outer.run(1)

    assert [(e.source, e.iters) for e in own] == [("", i) for i in range(4)]
    nested = [e for e in everything if e.source]
    assert {e.source for e in nested} == {"generator_loop"}
    assert [e.iters for e in nested] == list(range(12))
    assert [e.metrics["loss"] for e in nested[:3]] == [0.0, 1.0, 2.0]
    assert len(by_name) == 5  # four nested runs, then the outer run's end
    assert [e.source for e in by_name] == ["generator_loop"] * 4 + [""]
    # the inner recipe's own subscribers see its events, consumed by the outer run's loop
    assert [e.iters for e in inner_own] == list(range(12))


def test_a_nested_run_costs_no_thread_even_from_a_forward_function():
    other = Recipe(lambda b: None, range(2))
    threads_seen = set()

    def forward(batch):
        other.run(1)
        threads_seen.add(threading.get_ident())

    with counting_loops_and_threads() as counts:
        Recipe(forward, range(50)).run(1)
    assert counts["loops"] == 1 and len(counts["threads"]) == 1
    assert other.progress.iters == 99 and len(threads_seen) == 1


def test_a_recipe_cannot_run_inside_its_own_run():
    recipe = Recipe(lambda b: recipe.run(1), range(2))
    with pytest.raises(RuntimeError, match="already running"):
        recipe.run(1)


def test_stop_in_a_nested_run_ends_only_that_run():
    inner = Recipe(lambda b: None, range(10))
    seen = []

    class StopAtThird:
        def on_batch_end(self, state):
            seen.append(state["batch"])
            if inner.progress.iters == 2:
                inner.stop()

    inner.callbacks.add_callback(StopAtThird())
    outer = Recipe(lambda b: inner.run(1), range(2))
    outer.run(1)
    assert outer.progress.iters == 1 and outer.progress.epoch_done
    # the first nested run stopped after its third batch, the second finished that epoch
    assert seen == list(range(10)) and inner.progress.epoch_done


def test_callbacks_edited_between_runs_take_effect():
    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(3))
    recipe.run(1)
    seen, delivered = [], []

    class Spy:
        def on_batch_end(self, state):
            seen.append(state["loss"].item())

    class Lossless(Subscriber):
        policy = "block"
        types = (BatchEnded,)

        def handle(self, event):
            delivered.append(event.iters)

    recipe.callbacks.cbs[1].append(Spy())  # as Torchélie's users do
    recipe.callbacks.cbs[2].append(Lossless())
    recipe.run(1)
    assert seen == [1.0, 1.0, 1.0] and delivered == [3, 4, 5]


def test_concurrent_evaluation_publishes_on_the_training_bus_and_checkpoints_wait():
    recipe = _train_and_test(test_takes_model=True)
    finished = []
    recipe.bus.subscribe(finished.append, types=[EvalFinished])
    saved = []

    class SaveTestLoop:
        def on_batch_end(self, state):
            saved.append(recipe.test_loop.state_dict())

    recipe.callbacks.add_callback(SaveTestLoop())
    with contextlib.redirect_stdout(io.StringIO()):
        recipe.run(1)
    evaluated = [e.iters for e in finished]
    assert set(evaluated) <= {0, 5, 10, 15, 20, 25, 30, 35, 39} and evaluated[-1] == 39
    assert len(evaluated) + _call_recipe(recipe).skipped == 9
    # never half-updated: a saved test loop holds whole evaluations (5 batches each)
    assert all((s["progress"]["iters"] + 1) % 5 == 0 for s in saved)
    assert all(s["progress"]["epoch_done"] for s in saved)


def test_a_nested_run_wants_what_the_outer_bus_would_deliver_from_it():
    """``run.wants`` inside a nested run answers for events tagged with its source: a
    subscription that takes only ``nested=['generator_loop']`` wants them, one that
    takes another source does not."""
    from evloop import context

    answers = []

    class Asks:
        def on_batch_end(self, state):
            answers.append(context.current().wants(BatchEnded))

    def run_with(nested):
        inner = Recipe(lambda b: None, range(1))
        inner.callbacks.add_callback(Asks())
        outer = Recipe(lambda b: inner.run(1), range(1))
        outer.register("generator_loop", inner)
        outer.bus.subscribe(lambda e: None, types=[BatchEnded], nested=nested, policy="block")
        answers.clear()
        outer.run(1)
        return answers[:1]

    assert run_with(["generator_loop"]) == [True]
    assert run_with(["another_loop"]) == [False]
