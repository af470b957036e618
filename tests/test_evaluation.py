"""CallRecipe, TrainAndTest and TrainAndCall: evaluations that do not stall training."""

import logging
import threading
import time

import pytest
import torch
from helpers import make_batches
from torch import nn

import evloop.callbacks as ecb
import evloop.recipes as erp
from evloop import Recipe
from evloop.events import EvalFinished, EvalSkipped

STEP_S = 0.002
EVAL_BATCH_S = 0.03


class GapMeter:
    """Longest wall-clock gap between two consecutive training batch starts."""

    def __init__(self):
        self.last = None
        self.longest = 0.0

    def on_batch_start(self, state):
        now = time.perf_counter()
        if self.last is not None:
            self.longest = max(self.longest, now - self.last)
        self.last = now


def _slow_eval_setup(concurrent: bool, n_train=120, n_test=10):
    model = nn.Linear(4, 3)

    def train_step(batch):
        time.sleep(STEP_S)  # stands in for GPU work
        return {}

    if concurrent:

        def test_step(batch, model):
            time.sleep(EVAL_BATCH_S)
            return {"out": model(batch[0])}
    else:

        def test_step(batch):
            time.sleep(EVAL_BATCH_S)
            return {"out": model(batch[0])}

    test_loop = Recipe(test_step, make_batches(n_test))
    test_loop.register("model", model, saved=False)
    recipe = Recipe(train_step, make_batches(n_train))
    recipe.register("model", model)
    gaps = GapMeter()
    call = ecb.CallRecipe(test_loop, run_every=50)
    recipe.callbacks.add_callbacks([ecb.Counter(), gaps, call])
    return recipe, gaps, call


def test_concurrent_evaluation_keeps_the_gap_near_one_step_and_inline_does_not():
    recipe, gaps, call = _slow_eval_setup(concurrent=True)
    assert call.mode == "concurrent"
    recipe.run(1)
    concurrent_gap = gaps.longest

    recipe, gaps, call = _slow_eval_setup(concurrent=False)
    assert call.mode == "inline"
    recipe.run(1)
    inline_gap = gaps.longest
    eval_time = 10 * EVAL_BATCH_S
    assert inline_gap >= eval_time
    assert concurrent_gap < eval_time / 3, (concurrent_gap, inline_gap)


def test_concurrent_results_are_tagged_with_the_snapshot_iteration():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)

    def train_step(batch):
        with torch.no_grad():
            model.weight.add_(1.0)  # the weight counts the training steps
        return {}

    seen_weights = []

    def test_step(batch, model):
        time.sleep(0.02)
        seen_weights.append(float(model.weight))
        return {"w": model.weight.detach().clone()}

    test_loop = Recipe(test_step, [0])
    test_loop.register("model", model, saved=False)
    test_loop.callbacks.add_callback(ecb.Log("w", "w"))
    recipe = Recipe(train_step, range(300))
    recipe.register("model", model)
    call = ecb.CallRecipe(test_loop, run_every=3, prefix="val")
    events = []
    recipe.bus.subscribe(events.append, types=[EvalFinished, EvalSkipped])
    recipe.callbacks.add_callbacks([ecb.Counter(), call])
    state = recipe.run(1)

    finished = [e for e in events if isinstance(e, EvalFinished)]
    skipped = [e for e in events if isinstance(e, EvalSkipped)]
    assert finished and skipped  # the evaluation is slower than 3 steps: some are skipped
    for event in finished:
        # the snapshot was taken after the step of that iteration: weight == iters + 1
        assert float(event.metrics["w"]) == event.iters + 1
        assert event.prefix == "val" and event.mode == "concurrent"
    assert len(finished) + len(skipped) == 100 + 1  # and the final weights at the end
    assert finished[-1].iters == 299
    assert skipped[-1].skipped == call.skipped == len(skipped)
    assert float(state["val_metrics"]["w"]) == finished[-1].iters + 1
    assert len(call._snapshots) == 1  # refreshed in place, never rebuilt or piled up
    assert float(model.weight.detach()) == 300  # the live model is untouched by the evaluation


def test_concurrent_mode_refuses_a_closure_over_the_live_model():
    model = nn.Linear(1, 1)
    test_loop = Recipe(lambda batch: {"y": model(batch)}, [torch.ones(1)])
    with pytest.raises(ValueError, match="take the recipe's registered modules by name"):
        ecb.CallRecipe(test_loop, mode="concurrent")
    with pytest.raises(ValueError, match="mode must be one of"):
        ecb.CallRecipe(test_loop, mode="sometimes")


def test_an_evaluation_failure_ends_the_run_with_its_prefix():
    model = nn.Linear(1, 1)

    def test_step(batch, model):
        raise ValueError("bad eval")

    test_loop = Recipe(test_step, [0])
    test_loop.register("model", model, saved=False)
    recipe = Recipe(lambda b: {}, range(5))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.CallRecipe(test_loop, run_every=2)])
    with pytest.raises(RuntimeError, match="evaluation 'test' failed.*bad eval"):
        recipe.run(1)


@pytest.mark.parametrize("closure", [True, False])
def test_train_and_test_evaluates_in_eval_mode_without_grad_once_per_evaluation(tmp_path, closure):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    modes = []

    def train_fun(batch):
        modes.append(("train", model.training, torch.is_grad_enabled()))
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    def observe(net, x, y):
        modes.append(("test", net.training, torch.is_grad_enabled()))
        return {"loss": nn.functional.cross_entropy(net(x), y)}

    if closure:

        def test_fun(batch):
            return observe(model, *batch)
    else:

        def test_fun(batch, model):
            return observe(model, *batch)

    recipe = erp.TrainAndTest(
        model,
        train_fun,
        test_fun,
        make_batches(12),
        make_batches(3),
        test_every=5,
        checkpoint=str(tmp_path / "ck"),
    )
    recipe.callbacks.add_callback(ecb.Optimizer(opt))
    recipe.test_loop.callbacks.add_callback(ecb.EpochMetricAvg("loss", False))
    evaluated = []
    recipe.bus.subscribe(lambda e: evaluated.append(e.iters), types=[EvalFinished], policy="block")
    state = recipe.run(1)
    assert {m for m in modes if m[0] == "train"} == {("train", True, True)}
    assert {m for m in modes if m[0] == "test"} == {("test", False, False)}
    assert "loss" in state["test_metrics"]
    assert model.training  # restored after each evaluation
    # after each evaluation (iterations 0, 5, 10 and the final weights, 11, as Torchélie;
    # a concurrent one still running at the next is skipped, and so is its file)
    assert set(evaluated) <= {0, 5, 10, 11} and {0, 11} <= set(evaluated)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == sorted(f"ckpt_{i}.pth" for i in set(evaluated))


def test_train_and_call_calls_the_function_without_a_loader_sampler():
    model = nn.Linear(2, 2)
    calls = []

    def sample(model):
        calls.append(model.training)
        return {"sample": model(torch.ones(1, 2))}

    def train_fun(batch):
        time.sleep(0.03)  # slower than an evaluation: none is skipped
        return {}

    recipe = erp.TrainAndCall(model, train_fun, sample, range(7), test_every=3, checkpoint=None)
    recipe.run(2)  # a plain range: no sampler to seed, no crash at epoch end
    assert calls == [False] * 6  # iterations 0, 3, 6, 9, 12 and the final 13
    assert recipe.callbacks.cbs[2][1].mode == "concurrent"


def test_a_stuck_evaluation_is_given_up_at_the_run_end_after_timeout_s(tmp_path, caplog):
    release = threading.Event()
    model = nn.Linear(1, 1)

    def stuck_evaluation(batch, model):
        release.wait(60)  # a data loader worker that never answers, say
        return {"loss": torch.tensor(0.0)}

    test_loop = Recipe(stuck_evaluation, range(1))
    test_loop.register("model", model)
    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(5))
    recipe.register("model", model)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.CallRecipe(test_loop, 100, timeout_s=0.5),
            ecb.Checkpoint(str(tmp_path / "ck_{iters}.pth"), recipe),
        ]
    )
    try:
        with caplog.at_level(logging.ERROR, logger="evloop"):
            recipe.run(1)  # returns: the evaluation of iteration 0 is given up on
        assert "evaluation 'test' still running after 0.5 s (timeout_s)" in caplog.text
        assert (tmp_path / "ck_4.pth").is_file()  # the run still ended cleanly
        assert "test_metrics" not in recipe.callbacks.state
    finally:
        release.set()


def test_call_recipe_refuses_a_timeout_that_is_not_positive():
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        ecb.CallRecipe(Recipe(lambda b: None, [1]), 10, mode="inline", timeout_s=0)
