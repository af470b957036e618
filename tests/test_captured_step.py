"""recipe.compile(whole_step=True): the captured step trains as eager does.

Most cases compile the captured graph with the ``aot_eager`` backend (the same
capture, no code generation: seconds); one compiles it with inductor (slow).
"""

import logging
import warnings

import pytest
import torch
from torch import nn

import evloop
import evloop.callbacks as ecb
from evloop import Recipe
from evloop.control import Command

FAST = {"backend": "aot_eager"}


def _batches(n=12, size=16, last=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n * size, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    batches = [(x[i : i + size], y[i : i + size]) for i in range(0, n * size, size)]
    if last is not None:
        batches.append((x[:last], y[:last]))
    return batches


def _forward(model):
    def forward(batch):  # the tutorial's: it calls backward itself
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss, "n": len(x)}

    return forward


def _train(
    captured,
    make_opt,
    epochs=2,
    batches=None,
    extra=(),
    options=FAST,
    forward=_forward,
    **optimizer,
):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = make_opt(model.parameters())
    recipe = Recipe(forward(model), batches if batches is not None else _batches())
    recipe.register("model", model)
    recipe.register("opt", opt)
    losses = []

    class Record:
        def on_batch_end(self, state):
            losses.append(float(state["loss"].detach()))

    callbacks = [ecb.Counter(), ecb.Optimizer(opt, **optimizer), *[e(opt) for e in extra]]
    recipe.callbacks.add_callbacks([*callbacks, ecb.EpochMetricAvg("loss"), Record()])
    if captured:
        recipe.compile(whole_step=True, **options)
    for _ in range(epochs):
        recipe.run(1)
    return losses, [p.detach().clone() for p in model.parameters()], recipe


def _assert_same(eager, captured, rel=1e-5):
    (e_losses, e_weights, _), (c_losses, c_weights, recipe) = eager, captured
    assert recipe.call_fun.reason is None
    assert recipe.call_fun.captured_steps > 0
    assert c_losses == pytest.approx(e_losses, rel=rel)
    for e, c in zip(e_weights, c_weights, strict=True):
        torch.testing.assert_close(c, e, rtol=rel, atol=1e-6)


def sgd(params):
    return torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=1e-3, nesterov=True)


def adamw(params):
    return torch.optim.AdamW(params, lr=0.02, weight_decay=0.1)


@pytest.mark.parametrize("make_opt", [sgd, adamw])
def test_captured_steps_train_as_eager_ones(make_opt):
    eager = _train(False, make_opt)
    captured = _train(True, make_opt)
    _assert_same(eager, captured)
    recipe = captured[2]
    assert recipe.call_fun.captured_steps == 24 - 1  # all but the optimizer's first
    assert recipe.parameters_by_name() == ()  # the forward function's own signature
    assert captured[0][-1] < captured[0][0] * 0.8  # it trains


def test_accumulation_and_clipping_are_captured_as_configured():
    options = {"accumulation": 3, "clip_grad_norm": 0.3, "grad_multiplier": 2.0}
    norms = {}

    def keep_norm(_):
        class Keep:
            def on_batch_end(self, state):
                if "grad_norm" in state["metrics"]:
                    norms.setdefault(id(self), []).append(float(state["metrics"]["grad_norm"]))

        return Keep()

    eager = _train(False, adamw, extra=[keep_norm], **options)
    captured = _train(True, adamw, extra=[keep_norm], **options)
    _assert_same(eager, captured)
    # three graphs: a window's first micro-batch, its middle one, its last (the step)
    assert len(captured[2].call_fun.graphs) == 3
    first, second = norms.values()
    assert second == pytest.approx(first, rel=1e-5)  # the clipped norm, posted the same


def test_a_scheduler_and_a_steered_rate_act_at_the_next_step_without_tracing_again():
    def sched(opt):
        return ecb.LRSched(
            torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5),
            metric=None,
            step_each_batch=True,
        )

    class SteerAt7:
        def on_batch_end(self, state):
            if state["iters"] == 7:
                command = Command(op="set", values={"lr": 0.01, "momentum": 0.5})
                evloop.context.current().recipe.controls.submit(command)

    eager = _train(False, sgd, extra=[sched, lambda opt: SteerAt7()])
    captured = _train(True, sgd, extra=[sched, lambda opt: SteerAt7()])
    _assert_same(eager, captured)
    recipe = captured[2]
    assert len(recipe.call_fun.graphs) == 1  # the values changed, not the graph
    group = recipe.opt.param_groups[0]
    assert group["momentum"] == 0.5
    assert group["lr"] < 0.01  # steered, then scheduled on


def test_a_run_resumed_mid_epoch_from_a_checkpoint_continues_exactly():
    class StopAt17:
        def on_batch_end(self, state):
            if state["iters"] == 17:  # the 5th batch of the second epoch
                evloop.context.current().stop()

    eager = _train(False, adamw, extra=[lambda opt: ecb.LRSched(_decay(opt), metric=None)])
    first = _train(True, adamw, extra=[lambda opt: ecb.LRSched(_decay(opt), metric=None)])
    # the same again, stopped at iteration 17, saved, loaded into a new recipe
    stopped = _train(
        True,
        adamw,
        epochs=2,
        extra=[lambda opt: ecb.LRSched(_decay(opt), metric=None), lambda opt: StopAt17()],
    )
    checkpoint = stopped[2].state_dict()
    resumed = _train(
        True, adamw, epochs=0, extra=[lambda opt: ecb.LRSched(_decay(opt), metric=None)]
    )
    recipe = resumed[2]
    recipe.load_state_dict(checkpoint)
    recipe.run(1)  # the rest of the second epoch
    assert recipe.progress.iters == eager[2].progress.iters
    # from its second step: the first, at a window's end, shows which parameters get
    # gradients (a loaded state holds none)
    assert recipe.call_fun.captured_steps == recipe.progress.iters - 17 - 1
    weights = [p.detach().clone() for p in recipe.model.parameters()]
    _assert_same(eager, (eager[0], weights, recipe))
    _assert_same(eager, first)


def _decay(opt):
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7)


def test_a_step_that_reads_a_value_on_the_host_runs_eagerly_with_one_warning():
    def reads_item(model):
        def forward(batch):
            x, y = batch
            loss = nn.functional.cross_entropy(model(x), y)
            if loss.item() > 100:  # data-dependent: cannot be one graph
                raise AssertionError("unreachable")
            loss.backward()
            return {"loss": loss}

        return forward

    eager = _train(False, sgd, forward=reads_item)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captured = _train(True, sgd, forward=reads_item)
    ours = [w for w in caught if "whole_step" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "the training step runs eagerly" in str(ours[0].message)
    assert "item" in str(ours[0].message) or "value out of" in str(ours[0].message)
    recipe = captured[2]
    assert recipe.call_fun.captured_steps == 0
    assert captured[0] == eager[0]  # eager, step for step


def test_an_optimizer_without_a_captured_update_runs_eagerly_with_one_warning():
    def rmsprop(params):
        return torch.optim.RMSprop(params, lr=0.01)

    with pytest.warns(RuntimeWarning, match="no captured update for RMSprop") as caught:
        captured = _train(True, rmsprop)
    assert len([w for w in caught if "whole_step" in str(w.message)]) == 1
    assert captured[0] == _train(False, rmsprop)[0]


def test_a_batch_of_another_shape_runs_eagerly_said_once(caplog):
    batches = _batches(last=5)  # each epoch ends with a batch of 5
    eager = _train(False, sgd, batches=batches)
    with caplog.at_level(logging.WARNING, logger="evloop"):
        captured = _train(True, sgd, batches=batches, options={**FAST, "shapes": 1})
    said = [r for r in caplog.records if "another shape" in r.getMessage()]
    assert len(said) == 1
    _assert_same(eager, captured)
    assert captured[2].call_fun.captured_steps == 26 - 1 - 2  # not the two short batches


@pytest.mark.slow
def test_the_inductor_compiled_step_trains_as_eager():
    eager = _train(False, sgd)
    captured = _train(True, sgd, options={})
    _assert_same(eager, captured)


def test_an_epochs_short_last_batch_gets_a_graph_of_its_own_by_default():
    batches = _batches(last=5)
    eager = _train(False, sgd, batches=batches)
    captured = _train(True, sgd, batches=batches)
    _assert_same(eager, captured)
    assert captured[2].call_fun.captured_steps == 26 - 1
    assert len(captured[2].call_fun.graphs) == 2


def test_epoch_means_are_updated_in_the_graph_as_eager_updates_them():
    def train(captured):
        posted = []

        class Means:
            def on_batch_done(self, state):
                posted.append(state["metrics"]["loss"])

        _, _, recipe = _train(captured, sgd, extra=[lambda opt: Means()], epochs=2)
        return posted, recipe

    eager, _ = train(False)
    captured, recipe = train(True)
    assert recipe.call_fun.averaged == ["loss"]
    seen = [m.clone() for m in captured]
    assert [float(m) for m in captured] == pytest.approx([float(m) for m in eager], rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(captured, seen, strict=True))  # never changed
    assert len({id(m) for m in captured}) == len(captured)  # a new tensor each step


@pytest.mark.parametrize("stop_at", [13, 14])  # a window closed, a window open
def test_a_captured_run_with_accumulation_resumes_exactly_between_windows(stop_at):
    class Stop:
        def on_batch_end(self, state):
            if state["iters"] == stop_at:
                evloop.context.current().stop()

    eager = _train(False, sgd, accumulation=2)
    stopped = _train(True, sgd, epochs=2, extra=[lambda opt: Stop()], accumulation=2)
    checkpoint = stopped[2].state_dict()
    resumed = _train(True, sgd, epochs=0, accumulation=2)
    recipe = resumed[2]
    recipe.load_state_dict(checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to eager
        recipe.run(1)  # the rest of the second epoch
    assert recipe.progress.iters == eager[2].progress.iters
    weights = [p.detach().clone() for p in recipe.model.parameters()]
    _assert_same(eager, (eager[0], weights, recipe))
