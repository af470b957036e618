"""The pairing of results and weights at its edges: files written out of order, files
between evaluations, and a concurrent evaluation's random numbers."""

import os
import threading

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import load, load_latest


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2))


def _recipe(folder, evaluation, steps=20, hold_first=None, **checkpoint):
    """A shuffled loader and dropout: training draws random numbers every step."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(steps * 4, 4, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, (x[:, 0] > 0).long())

    def forward(batch):
        inputs, labels = batch
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        return {"loss": loss}

    def test_fun(batch, model):
        if hold_first is not None:
            hold_first.wait(30)
        inputs, labels = batch
        return {"loss": nn.functional.cross_entropy(model(inputs), labels)}

    test_loop = Recipe(test_fun, DataLoader(data, batch_size=16))
    test_loop.callbacks.add_callback(ecb.EpochMetricAvg("loss", False))
    recipe = Recipe(forward, DataLoader(data, batch_size=4, shuffle=True))
    recipe.register("model", model)
    recipe.register("test_loop", test_loop)
    test_loop.register("model", model, saved=False)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt)])
    if evaluation is not None:
        recipe.callbacks.add_callback(ecb.CallRecipe(test_loop, 10, **evaluation))
    if checkpoint:
        recipe.callbacks.add_epilogue(
            ecb.Checkpoint(str(folder / "c_{iters}.pth"), recipe, **checkpoint)
        )
    return recipe, model


def test_a_concurrent_evaluation_leaves_trainings_random_numbers_alone(tmp_path):
    plain, plain_model = _recipe(tmp_path, None)
    plain.run(2)
    evaluated, model = _recipe(tmp_path, {"mode": "concurrent"})
    evaluated.run(2)
    for name, weights in plain_model.state_dict().items():
        assert torch.equal(weights, model.state_dict()[name]), name


def test_the_newest_file_is_the_newest_state_even_when_an_evaluations_comes_later(tmp_path):
    release = threading.Event()
    recipe, _ = _recipe(
        tmp_path,
        {"mode": "concurrent", "at_end": False},
        hold_first=release,
        monitor="test_metrics.loss",
        mode="min",
        every=5,
    )

    class ReleaseAt12:
        def on_batch_start(self, state):
            if state["iters"] == 12:
                release.set()

    recipe.callbacks.add_callback(ReleaseAt12())
    recipe.run(1)
    written = sorted(os.listdir(tmp_path), key=lambda n: os.stat(tmp_path / n).st_mtime_ns)
    assert "c_0.pth" in written  # the evaluation of step 0, written after c_4 and c_9
    path, state = load_latest(str(tmp_path))
    assert path.endswith("c_19.pth") and state["progress"]["iters"] == 19


def test_a_file_between_evaluations_holds_no_results_of_other_weights(tmp_path):
    recipe, _ = _recipe(
        tmp_path, {"mode": "inline", "at_end": False}, monitor="test_metrics.loss", every=4
    )
    recipe.run(1)
    for name in sorted(os.listdir(tmp_path)):
        saved = load(str(tmp_path / name))
        shared = saved["callbacks"]["state"]
        iters = saved["progress"]["iters"]
        evaluated = iters % 10 == 0  # CallRecipe's steps: the file of an evaluation
        assert ("test_metrics" in shared) is evaluated, (name, sorted(shared))
        assert bool(saved["test_loop"]["callbacks"]["state"]["metrics"]) is evaluated, name
