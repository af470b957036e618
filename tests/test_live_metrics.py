"""``state['metrics']`` computes an epoch's mean when it is read, not at every batch,
and every way of reading it sees the current mean."""

import copy
import json
import pickle

import pytest
import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop._live_metrics import Deferred, LiveMetrics
from evloop.callbacks.averages import FOLD_EVERY


def _losses(n):
    generator = torch.Generator().manual_seed(0)
    return [torch.rand((), generator=generator) for _ in range(n)]


class Reads:
    """A later callback, as Torchélie code reads the metrics: at every batch."""

    def __init__(self, every=1):
        self.every = every
        self.seen = []  # (batches so far, the mean posted, its value then)
        self.deferred = []  # whether the mean was still to compute when read

    def on_batch_end(self, state):
        batches = state["iters"] + 1  # Counter's iters: the batches before this one
        if batches % self.every == 0:
            self.deferred.append(type(dict.__getitem__(state["metrics"], "loss")) is Deferred)
            mean = state["metrics"]["loss"]
            self.seen.append((batches, mean, mean.clone()))


def _run(losses, *callbacks, epochs=1):
    recipe = Recipe(lambda i: {"loss": losses[i]}, range(len(losses)))
    averager = ecb.EpochMetricAvg("loss")
    recipe.callbacks.add_callbacks([ecb.Counter(), averager, *callbacks])
    recipe.run(epochs)
    return recipe, averager


@pytest.mark.parametrize("every", [1, 7, 100])
def test_a_reader_at_any_batch_sees_the_mean_so_far_and_posted_means_never_change(every):
    losses = _losses(150)
    reads = Reads(every)
    recipe, _ = _run(losses, reads)
    assert [it for it, *_ in reads.seen] == list(range(every, 151, every))
    assert all(reads.deferred)
    for iters, posted, then in reads.seen:
        expected = torch.stack(losses[:iters]).mean()
        assert float(posted) == pytest.approx(float(expected), rel=1e-6)
        assert torch.equal(posted, then)  # what was read once never changed since
    final = recipe.callbacks.state["metrics"]["loss"]
    assert float(final) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-6)


def test_nothing_is_computed_while_nothing_reads_and_the_values_kept_are_bounded():
    class Watches:
        def __init__(self):
            self.unfolded = []

        def on_batch_end(self, state):
            self.unfolded.append(len(averager._unfolded))

    losses = _losses(3 * FOLD_EVERY + 5)
    averager = ecb.EpochMetricAvg("loss")
    watches = Watches()
    recipe = Recipe(lambda i: {"loss": losses[i]}, range(len(losses)))
    recipe.callbacks.add_callbacks([averager, watches])
    recipe.run(1)
    # one stacked sum every FOLD_EVERY batches, never one op a batch
    assert watches.unfolded == [i % FOLD_EVERY for i in range(1, len(losses) + 1)]


def test_every_way_of_reading_the_metrics_gets_values():
    losses = _losses(10)
    seen = {}

    class ReadsEveryWay:
        def on_batch_end(self, state):
            if state["iters"] != 9:  # the last batch
                return
            m = state["metrics"]
            assert type(dict.__getitem__(m, "loss")) is Deferred  # not computed yet
            seen["dict"] = dict(m)
            seen["spread"] = {**m}
            seen["copy"] = m.copy()
            seen["copy.copy"] = copy.copy(m)
            seen["pickle"] = pickle.loads(pickle.dumps(m))
            seen["items"] = dict(m.items())
            seen["values"] = list(m.values())
            seen["or"] = m | {}
            seen["json"] = json.loads(json.dumps({k: float(v) for k, v in m.items()}))
            seen["repr"] = repr(m)

    _run(losses, ReadsEveryWay())
    expected = float(torch.stack(losses).mean())
    for way in ("dict", "spread", "copy", "copy.copy", "pickle", "items", "or", "json"):
        assert type(seen[way]) is dict, way
        assert float(seen[way]["loss"]) == pytest.approx(expected, rel=1e-6), way
    assert float(seen["values"][0]) == pytest.approx(expected, rel=1e-6)
    assert "Deferred" not in seen["repr"]


def test_a_live_metrics_dict_behaves_as_a_dict():
    calls = []

    def compute():
        calls.append(1)
        return 3.0

    m = LiveMetrics(a=1)
    m["b"] = Deferred(compute)
    assert m == {"a": 1, "b": 3.0} and not m != {"a": 1, "b": 3.0}
    assert m["b"] == 3.0 and len(calls) == 1  # computed once, then stored
    m["b"] = Deferred(compute)
    assert m.get("b") == 3.0 and m.get("zzz", 5) == 5
    m["b"] = Deferred(compute)
    assert m.pop("b") == 3.0 and "b" not in m and m.pop("b", None) is None
    m["c"] = Deferred(compute)
    assert m.setdefault("c", 0) == 3.0
    assert isinstance(m, dict) and sorted(m) == ["a", "c"]


def test_a_resumed_run_continues_the_epoch_mean_exactly(tmp_path):
    losses = _losses(40)

    class StopsAt:
        def on_batch_end(self, state):
            if state["iters"] == 22:  # the 23rd batch
                recipe.stop()

    recipe = Recipe(lambda i: {"loss": losses[i]}, range(40))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.EpochMetricAvg("loss"), StopsAt()])
    recipe.run(1)
    saved = recipe.state_dict()
    torch.save(saved, tmp_path / "c.pth")

    resumed, reads = Recipe(lambda i: {"loss": losses[i]}, range(40)), Reads()
    resumed.callbacks.add_callbacks([ecb.Counter(), ecb.EpochMetricAvg("loss"), reads])
    resumed.load_state_dict(torch.load(tmp_path / "c.pth", weights_only=True))
    assert type(resumed.callbacks.state["metrics"]) is LiveMetrics
    resumed.run(1)
    assert [it for it, *_ in reads.seen] == list(range(24, 41))
    assert all(reads.deferred)  # computed when read, from the resumed batch on
    for iters, posted, _ in reads.seen:
        expected = float(torch.stack(losses[:iters]).mean())
        assert float(posted) == pytest.approx(expected, rel=1e-6)


def test_python_numbers_are_averaged_as_before():
    recipe = Recipe(lambda i: {"loss": float(i)}, range(10))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.EpochMetricAvg("loss")])
    recipe.run(1)
    assert recipe.callbacks.state["metrics"]["loss"] == pytest.approx(4.5)


def test_values_of_changing_shapes_are_averaged_one_by_one():
    values = [torch.ones(3), torch.full((3,), 3.0), torch.tensor(5.0)]  # broadcast last
    recipe = Recipe(lambda i: {"v": values[i]}, range(3))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.EpochMetricAvg("v")])
    recipe.run(1)
    assert torch.allclose(recipe.callbacks.state["metrics"]["v"], torch.full((3,), 3.0))
