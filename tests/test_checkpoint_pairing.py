"""Every checkpoint holds the weights its recorded scores came from: reloading a file and
evaluating it again gives exactly the results saved in it, for inline and concurrent
evaluations, with key_best and with monitor."""

import os
import threading

import pytest
import torch
from torch import nn

import evloop.callbacks as ecb
import evloop.recipes as erp
from evloop import Recipe
from evloop.checkpoint_io import load
from tests.helpers import make_batches


def _train_and_test(folder, mode, checkpoint="key_best", steps=14, test_every=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def train_fun(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    def evaluate(net, batch):
        x, y = batch
        return {"loss": nn.functional.cross_entropy(net(x), y)}

    if mode == "inline":

        def test_fun(batch):
            return evaluate(model, batch)
    else:

        def test_fun(batch, model):
            return evaluate(model, batch)

    recipe = erp.TrainAndTest(
        model,
        train_fun,
        test_fun,
        make_batches(steps, seed=1),
        make_batches(3, seed=2),
        test_every=test_every,
        checkpoint=str(folder) if checkpoint == "key_best" else None,
        key_best=lambda saved: -float(saved["callbacks"]["state"]["test_metrics"]["loss"]),
        test_mode=mode,
    )
    recipe.register("opt", opt)
    recipe.callbacks.add_callback(ecb.Optimizer(opt))
    recipe.test_loop.callbacks.add_callback(ecb.EpochMetricAvg("loss", False))
    if checkpoint == "monitor":
        recipe.callbacks.add_epilogue(
            ecb.Checkpoint(
                str(folder / "m_{iters}.pth"), recipe, monitor="test_metrics.loss", mode="min"
            )
        )
    return recipe, model


def _recorded_and_remeasured(folder, mode):
    """For each file: (name, the test loss it records, the test loss of its weights)."""
    rows = []
    for name in sorted(os.listdir(folder)):
        saved = load(str(folder / name))
        recorded = saved["callbacks"]["state"]["test_metrics"]["loss"]
        loop_recorded = saved["test_loop"]["callbacks"]["state"]["metrics"]["loss"]
        assert torch.equal(torch.as_tensor(recorded), torch.as_tensor(loop_recorded)), name
        fresh, _ = _train_and_test(folder / "unused", mode, checkpoint=None)
        fresh.load_state_dict(saved)
        fresh.test_loop.run(1)  # the same evaluation, on the file's weights
        again = fresh.test_loop.state["metrics"]["loss"]
        rows.append((name, float(recorded), float(again)))
    return rows


def _evaluated_iterations(recipe):
    evaluated = []

    def record(state, evaluation):
        evaluated.append(evaluation.iters)

    recipe.callbacks.add_callback(type("Record", (), {"on_eval_end": staticmethod(record)})())
    return evaluated


@pytest.mark.parametrize("mode", ["inline", "concurrent"])
def test_every_file_reproduces_the_scores_it_records(tmp_path, mode):
    recipe, _ = _train_and_test(tmp_path, mode)
    evaluated = _evaluated_iterations(recipe)
    recipe.run(1)
    if mode == "inline":  # named after the evaluated iteration, as Torchélie
        assert evaluated == [0, 4, 8, 12, 13]
    assert evaluated[0] == 0 and evaluated[-1] == 13  # the final weights, at the run's end
    rows = _recorded_and_remeasured(tmp_path, mode)
    files = {row[0] for row in rows if not row[0].endswith("_best.pth")}
    assert files == {f"ckpt_{i}.pth" for i in evaluated}
    for name, recorded, again in rows:
        assert recorded == again, (name, recorded, again)
    best = [row for row in rows if row[0].endswith("_best.pth")]
    assert len(best) == 1
    assert best[0][1] == min(row[1] for row in rows)


def test_a_monitored_evaluation_is_followed_and_paired_too(tmp_path):
    recipe, _ = _train_and_test(tmp_path, "concurrent", checkpoint="monitor")
    checkpoint = next(cb for cb in recipe.callbacks.callbacks() if isinstance(cb, ecb.Checkpoint))
    evaluated = _evaluated_iterations(recipe)
    recipe.run(1)
    assert checkpoint.follows == "test"
    rows = _recorded_and_remeasured(tmp_path, "concurrent")
    assert {row[0] for row in rows if "_best" not in row[0]} == {f"m_{i}.pth" for i in evaluated}
    for name, recorded, again in rows:
        assert recorded == again, (name, recorded, again)
    best = min(rows, key=lambda row: row[1])
    assert os.path.exists(tmp_path / best[0].replace(".pth", "_best.pth"))


def test_a_concurrent_evaluation_back_steps_later_still_pairs(tmp_path):
    """The evaluation of step 0 is held until training reaches step 3: its file still
    holds step 0's weights and state, while training went on."""
    recipe, _ = _train_and_test(tmp_path, "concurrent", steps=12, test_every=6)
    reached_step_3 = threading.Event()
    test_fun = recipe.test_loop.call_fun

    def held_test_fun(batch, model):
        assert reached_step_3.wait(30), "training never reached step 3"
        return test_fun(batch, model)

    recipe.test_loop.call_fun = held_test_fun
    ended_at = []

    class Watch:
        def on_batch_start(self, state):
            if state["iters"] == 3:
                reached_step_3.set()

        def on_eval_end(self, state, evaluation):
            ended_at.append((evaluation.iters, state["iters"]))

    recipe.callbacks.add_callback(Watch())
    recipe.run(1)
    assert ended_at[0][0] == 0 and ended_at[0][1] >= 3
    saved = load(str(tmp_path / "ckpt_0.pth"))
    assert saved["progress"]["iters"] == 0
    for name, recorded, again in _recorded_and_remeasured(tmp_path, "concurrent"):
        assert recorded == again, (name, recorded, again)


def test_key_best_without_evaluation_warns_when_the_recipe_evaluates(tmp_path):
    test_loop = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(1))
    recipe = Recipe(lambda b: None, range(2))
    recipe.register("test_loop", test_loop)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.CallRecipe(test_loop, 1),
            ecb.Checkpoint(str(tmp_path / "c{iters}.pth"), recipe, key_best=lambda s: 0.0),
        ]
    )
    with pytest.warns(RuntimeWarning, match="pass evaluation='test'"):
        recipe.run(1)


def test_following_an_evaluation_that_does_not_exist_is_an_error(tmp_path):
    recipe = Recipe(lambda b: None, range(2))
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Checkpoint(str(tmp_path / "c.pth"), recipe, evaluation="val")]
    )
    with pytest.raises(ValueError, match="no CallRecipe with that prefix"):
        recipe.run(1)
