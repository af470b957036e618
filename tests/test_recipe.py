import collections
import dataclasses

import pytest
import torch
from helpers import linear_recipe, make_batches
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.events import BatchEnded, EpochEnded, RunFailed, RunFinished
from evloop.utils import send_to_device


def test_counters_follow_torchelie_semantics():
    seen = []

    class Spy:
        def on_epoch_start(self, state):
            seen.append(("epoch_start", state["epoch"], state["iters"], state["epoch_batch"]))

        def on_batch_end(self, state):
            seen.append(("batch", state["epoch"], state["iters"], state["epoch_batch"]))

    recipe = Recipe(lambda b: {}, range(3))
    recipe.callbacks.add_callbacks([ecb.Counter(), Spy()])
    state = recipe.run(2)
    assert seen == [
        ("epoch_start", 0, -1, 0),
        ("batch", 0, 0, 1),
        ("batch", 0, 1, 2),
        ("batch", 0, 2, 3),
        ("epoch_start", 1, 2, 0),
        ("batch", 1, 3, 1),
        ("batch", 1, 4, 2),
        ("batch", 1, 5, 3),
    ]
    assert (state["epoch"], state["iters"], state["epoch_batch"]) == (1, 5, 3)
    assert (recipe.progress.epoch, recipe.progress.iters) == (1, 5)


def test_state_holds_host_batch_device_batch_and_outputs_that_stay_on_device():
    recipe = Recipe(lambda b: {"double": b * 2}, [torch.ones(2)])
    state = recipe.run(1)
    assert torch.equal(state["batch"], torch.ones(2))
    assert torch.equal(state["double"], torch.full((2,), 2.0))
    assert state["_loader"] is recipe.loader


def test_run_returns_the_live_state_and_accumulates_across_runs():
    recipe = linear_recipe(make_batches(5))
    first = recipe.run(1)
    second = recipe.run(2)
    assert first is second is recipe.state
    assert second["iters"] == 14 and second["epoch"] == 2


def test_forward_must_return_a_dict():
    recipe = Recipe(lambda b: 3, [1])
    with pytest.raises(TypeError, match="must return a dict"):
        recipe.run(1)


def test_a_failing_step_publishes_run_failed_and_reraises():
    received = []

    def forward(batch):
        if batch == 2:
            raise ValueError("bad batch")
        return {}

    recipe = Recipe(forward, range(5))
    recipe.bus.subscribe(received.append, policy="block")
    with pytest.raises(ValueError, match="bad batch"):
        recipe.run(1)
    assert isinstance(received[-1], RunFailed)
    assert "bad batch" in received[-1].error and received[-1].iters == 2


def test_state_dict_round_trip_restores_plain_values_and_modules():
    recipe = linear_recipe(make_batches(4))
    recipe.callbacks.add_callback(ecb.EpochMetricAvg("loss"))
    recipe.register("classes", ["cat", "dog"])
    recipe.register("best", 0.75)
    recipe.run(1)
    saved = recipe.state_dict()

    other = linear_recipe(make_batches(4))
    other.callbacks.add_callback(ecb.EpochMetricAvg("loss"))
    other.register("classes", ["new"])
    other.register("best", 0.0)
    with torch.no_grad():
        other.model.weight.zero_()
    other.load_state_dict(saved)
    assert other.classes == ["cat", "dog"] and other.best == 0.75
    assert torch.equal(other.model.weight, recipe.model.weight)
    assert other.state["iters"] == 3 and other.progress.iters == 3
    loaded_avg = other.callbacks.named_callbacks()["EpochMetricAvg[loss]"]
    assert loaded_avg.count == 4
    assert other.state["_loader"] is other.loader  # transient handles survive a load
    assert other.opt.state_dict()["state"].keys() == recipe.opt.state_dict()["state"].keys()


def test_state_dict_never_holds_batches_outputs_or_private_keys():
    recipe = linear_recipe(make_batches(3))
    recipe.run(1)
    assert {"batch", "loss", "_batch_gpu", "_loader"} <= recipe.state.keys()
    saved_state = recipe.state_dict()["callbacks"]["state"]
    assert not {"batch", "loss", "_batch_gpu", "_loader"} & saved_state.keys()
    assert {"epoch", "iters", "metrics"} <= saved_state.keys()


def test_loading_unknown_keys_is_a_clear_error_that_loads_nothing():
    recipe = linear_recipe(make_batches(2))
    before = recipe.model.weight.clone()
    bad = {"model": {k: v + 1 for k, v in recipe.model.state_dict().items()}, "ghost": 1}
    with pytest.raises(KeyError, match="ghost"):
        recipe.load_state_dict(bad)
    assert torch.equal(recipe.model.weight, before)
    recipe.load_state_dict(bad, strict=False)
    assert torch.equal(recipe.model.weight, before + 1)


def test_register_refuses_names_that_hide_the_recipe_api():
    recipe = Recipe(lambda b: {}, [])
    with pytest.raises(ValueError, match="hide Recipe.run"):
        recipe.register("run", 1)
    recipe.register("model", nn.Linear(1, 1))
    recipe.register("model", nn.Linear(2, 2))  # re-registering replaces
    assert recipe.model.in_features == 2


def test_to_follows_modules_tensors_and_nested_recipes():
    inner = Recipe(lambda b: {}, [])
    inner.register("head", nn.Linear(2, 2))
    outer = Recipe(lambda b: {}, [])
    outer.register("model", nn.Linear(2, 2))
    outer.register("inner", inner)
    outer.register("scale", torch.ones(1))
    outer.to("meta")
    assert outer.device == torch.device("meta")
    assert outer.model.weight.device.type == "meta"
    assert inner.device.type == "meta" and inner.head.weight.device.type == "meta"
    assert outer.scale.device.type == "meta"


class Pair(collections.namedtuple("Pair", "x y")):
    pass


@dataclasses.dataclass(frozen=True)
class Sample:
    image: torch.Tensor
    label: int


def test_send_to_device_keeps_container_types():
    batch = {
        "pair": Pair(torch.ones(1), [torch.zeros(1), (torch.ones(2),)]),
        "ordered": collections.OrderedDict(b=torch.ones(1), a=torch.ones(1)),
        "default": collections.defaultdict(list, k=torch.ones(1)),
        "sample": Sample(torch.ones(3), 4),
        "name": "text",
    }
    moved = send_to_device(batch, "meta")
    assert type(moved["pair"]) is Pair and moved["pair"].x.device.type == "meta"
    assert moved["pair"].y[1][0].device.type == "meta"
    assert type(moved["ordered"]) is collections.OrderedDict
    assert list(moved["ordered"]) == ["b", "a"]
    assert moved["default"].default_factory is list
    assert type(moved["sample"]) is Sample and moved["sample"].image.device.type == "meta"
    assert moved["sample"].label == 4 and moved["name"] == "text"
    assert batch["sample"].image.device.type == "cpu"  # the input is untouched


def test_batch_and_epoch_events_carry_counters_and_a_metric_snapshot():
    received = []
    recipe = linear_recipe(make_batches(3))
    recipe.callbacks.add_callback(ecb.EpochMetricAvg("loss"))
    recipe.bus.subscribe(
        received.append, types=[BatchEnded, EpochEnded, RunFinished], policy="block"
    )
    recipe.run(1)
    batches = [e for e in received if isinstance(e, BatchEnded)]
    assert [(b.epoch, b.iters, b.epoch_batch) for b in batches] == [(0, 0, 1), (0, 1, 2), (0, 2, 3)]
    losses = [float(b.metrics["loss"]) for b in batches]
    assert len(set(losses)) == 3  # each event kept its own value, not the live one
    assert isinstance(received[-1], RunFinished) and not received[-1].stopped
    assert all(not v.requires_grad for b in batches for v in b.metrics.values())


def test_grad_mode_of_the_caller_reaches_the_training_thread():
    seen = []
    recipe = Recipe(lambda b: seen.append(torch.is_grad_enabled()), [0])
    with torch.no_grad():
        recipe.run(1)
    recipe.run(1)
    assert seen == [False, True]


def test_stop_from_a_callback_ends_at_the_batch_boundary():
    recipe = Recipe(lambda b: {}, range(10))
    finished = []

    class StopAt:
        def on_batch_end(self, state):
            if state["iters"] == 3:
                recipe.stop()

    recipe.callbacks.add_callbacks([ecb.Counter(), StopAt()])
    recipe.bus.subscribe(finished.append, types=[RunFinished])
    state = recipe.run(5)
    assert state["iters"] == 3
    assert finished[0].stopped


def test_run_inside_a_running_event_loop_trains_beside_it():
    # as in a notebook, where the kernel's loop runs in the thread of every cell
    import asyncio

    seen = []

    async def main():
        recipe = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(5))
        recipe.callbacks.add_callback(ecb.Log("loss", "loss"))
        recipe.bus.subscribe(seen.append, types=[BatchEnded], policy="block")
        return recipe.run(2)

    state = asyncio.run(main())
    assert state["metrics"]["loss"] == 4.0
    assert [e.iters for e in seen] == list(range(10))
