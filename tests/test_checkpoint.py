"""Checkpoint bookkeeping across resumes, the monitored best file, per-epoch evaluation."""

import os

import pytest
import torch

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import load, load_latest
from evloop.events import EvalFinished


def _recipe(folder, losses, max_saves=2, **checkpoint):
    """Each epoch's 'test' loss comes from ``losses`` (by epoch)."""
    test_loop = Recipe(lambda b: None, range(1))
    recipe = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(3))
    recipe.register("test_loop", test_loop)

    class FakeEvaluation:
        def on_epoch_end(self, state):
            state["test_metrics"] = {"loss": torch.tensor(losses[state["epoch"]])}

    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            FakeEvaluation(),
            ecb.Checkpoint(str(folder / "e{epoch}.pth"), recipe, max_saves=max_saves, **checkpoint),
        ]
    )
    return recipe


def _files(folder):
    return sorted(os.listdir(folder))


def test_rotation_and_the_single_best_file_survive_a_resume(tmp_path):
    losses = [5.0, 1.0, 4.0, 3.0, 2.0]
    first = _recipe(tmp_path, losses, monitor="test_metrics.loss", mode="min")
    first.run(3)  # e0 e1 e2; best: e1
    assert _files(tmp_path) == ["e1.pth", "e1_best.pth", "e2.pth"]

    path, state = load_latest(str(tmp_path / "e1.pth"))  # resume from an older file
    second = _recipe(tmp_path, losses, monitor="test_metrics.loss", mode="min")
    second.load_state_dict(state)
    second.run(total_epochs=5)  # trains epochs 2, 3, 4 again
    # the saved rotation went on (max_saves=2), the best file is still e1's (loss 1.0)
    assert _files(tmp_path) == ["e1_best.pth", "e3.pth", "e4.pth"]
    best = load(str(tmp_path / "e1_best.pth"))
    assert best["callbacks"]["state"]["test_metrics"]["loss"] == 1.0
    saved = load(str(tmp_path / "e4.pth"))["callbacks"]["callbacks"]
    assert saved["Checkpoint[" + str(tmp_path / "e{epoch}.pth") + "]"]["saved"] == [
        str(tmp_path / "e3.pth"),
        str(tmp_path / "e4.pth"),
    ]


def test_a_new_best_after_a_resume_replaces_the_old_best_file(tmp_path):
    losses = [5.0, 4.0, 3.0, 2.0, 1.0]
    first = _recipe(tmp_path, losses, monitor="test_metrics.loss", mode="min")
    first.run(2)
    state = load(str(tmp_path / "e0.pth"))  # an older state: its best was e0
    second = _recipe(tmp_path, losses, monitor="test_metrics.loss", mode="min")
    second.load_state_dict(state)
    second.run(total_epochs=5)
    assert [f for f in _files(tmp_path) if "_best" in f] == ["e4_best.pth"]


def test_monitor_in_max_mode_keeps_the_highest(tmp_path):
    losses = [1.0, 3.0, 2.0]
    _recipe(tmp_path, losses, max_saves=5, monitor="test_metrics.loss", mode="max").run(3)
    assert [f for f in _files(tmp_path) if "_best" in f] == ["e1_best.pth"]


def test_evaluations_can_run_at_each_epoch_end():
    test_loop = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(2))
    test_loop.callbacks.add_callback(ecb.EpochMetricAvg("loss"))
    recipe = Recipe(lambda b: None, range(7))
    finished = []
    recipe.bus.subscribe(finished.append, types=[EvalFinished])
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.CallRecipe(test_loop, "epoch")])
    recipe.run(3)
    assert [e.iters for e in finished] == [6, 13, 20]  # each epoch's final weights, once


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"max_saves": 0}, "max_saves must be at least 1, got 0"), ({"timeout_s": 0}, "timeout_s")],
)
def test_bad_settings_are_refused_at_construction(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        ecb.Checkpoint(str(tmp_path / "e{epoch}.pth"), Recipe(lambda b: None, []), **arguments)
