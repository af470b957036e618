"""Steering a running recipe from a real websocket client, the CLI and Python."""

import asyncio
import logging
import math
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.checkpoint_io import load
from evloop.control import Command, CommandError
from evloop.events import CommandApplied, EvalFinished, SettingsRolledBack
from evloop.remote import control

CONTROL = "c0ntrol"


def _steerable(tmp_path, n=100_000, step_s=0.003):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))

    def forward(batch):
        time.sleep(step_s)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    test_loop = Recipe(lambda b: {"acc": torch.tensor(0.5)}, range(1))
    test_loop.callbacks.add_callback(ecb.Log("acc", "acc"))
    recipe = Recipe(forward, range(n))
    recipe.register("model", model)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.CallRecipe(test_loop, 1_000_000, at_end=False),
            ecb.Checkpoint(str(tmp_path / "ck_{iters}.pth"), recipe),
        ]
    )
    applied, evaluated = [], []
    recipe.bus.subscribe(applied.append, types=[CommandApplied])
    recipe.bus.subscribe(evaluated.append, types=[EvalFinished])
    return recipe, opt, applied, evaluated


@pytest.fixture
def running(tmp_path):
    recipe, opt, applied, evaluated = _steerable(tmp_path)
    server = recipe.serve(quiet=True, token="read", control_token=CONTROL)
    thread = threading.Thread(target=recipe.run, args=(1,))
    thread.start()
    while recipe.progress.iters < 5:
        time.sleep(0.01)
    yield recipe, opt, applied, evaluated, server, tmp_path
    recipe.stop()
    thread.join(30)
    server.close()


def test_commands_change_the_run_between_steps_and_are_recorded(running):
    recipe, opt, applied, evaluated, server, tmp_path = running

    async def steer():
        async with control(server.ws_url, CONTROL) as run:
            changed = await run.set(lr=0.01)
            assert changed.changes == {"lr": [0.1, 0.01]}
            assert run.settings["lr"] == 0.1 and "momentum" in run.settings
            await run.set(**{"test.run_every": 3})
            await run.checkpoint()
            await run.evaluate()
            paused = await run.pause()
            stopped_at = recipe.progress.iters
            await asyncio.sleep(0.5)
            assert recipe.progress.iters == stopped_at  # no step while paused
            await run.set(momentum=0.5)  # still applied while paused
            await run.resume()
            deadline = time.monotonic() + 30  # steps again once resumed
            while recipe.progress.iters <= stopped_at and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            assert recipe.progress.iters > stopped_at
            await run.stop()
            return paused

    paused = asyncio.run(asyncio.wait_for(steer(), 60))
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.5
    ops = ["set", "set", "checkpoint", "eval", "pause", "set", "resume", "stop"]
    deadline = time.monotonic() + 30  # stop() returns once queued; applied comes after
    while len(applied) < len(ops) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [a.op for a in applied] == ops
    assert all(a.ok for a in applied) and "127.0.0.1" in paused.client
    assert any(p.name.startswith("ck_") for p in tmp_path.iterdir())  # the checkpoint now
    assert evaluated  # the evaluation now
    assert recipe.state["iters"] < 90_000  # stop ended the run early


def test_invalid_commands_get_specific_errors_and_change_nothing(running):
    recipe, opt, applied, evaluated, server, tmp_path = running

    async def try_all():
        errors = []
        async with control(server.ws_url, CONTROL) as run:
            for op, values in [
                ("set", {"lrr": 0.1}),
                ("set", {"lr": "fast"}),
                ("set", {"lr": -1}),
                ("set", {"accumulation": 1.5}),
                ("fly", {}),
            ]:
                with pytest.raises(CommandError) as refused:
                    await run.send(op, values)
                errors.append(str(refused.value))
        return errors

    errors = asyncio.run(asyncio.wait_for(try_all(), 60))
    assert errors[0].startswith("no setting 'lrr'; settings: ") and "lr" in errors[0]
    assert errors[1] == "lr must be a number, got 'fast'"
    assert errors[2] == (
        "lr must be a finite number in [0, 10] (Optimizer(max_lr=...) raises the maximum), got -1"
    )
    assert errors[3] == "accumulation must be a whole number in [1, 9007199254740992], got 1.5"
    assert errors[4].startswith("unknown command 'fly'")
    assert opt.param_groups[0]["lr"] == 0.1 and applied == []


def test_a_read_token_cannot_send_commands(running):
    recipe, opt, applied, evaluated, server, tmp_path = running

    async def as_reader():
        async with control(server.ws_url, "read"):
            pass

    with pytest.raises(CommandError, match="may only watch"):
        asyncio.run(as_reader())


def test_the_ctl_command(running):
    recipe, opt, applied, evaluated, server, tmp_path = running
    base = [sys.executable, "-m", "evloop.cli", "ctl", server.ws_url]
    ok = subprocess.run(
        [*base, "set", "lr=0.5", "--token", CONTROL], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert "evloop ctl: set applied: lr 0.1 → 0.5" in ok.stdout
    refused = subprocess.run(
        [*base, "set", "lr=-3", "--token", CONTROL], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1 and "lr must be a finite number in [0, 10]" in refused.stderr
    usage = subprocess.run([*base, "set"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2
    assert opt.param_groups[0]["lr"] == 0.5


def _at(iters, recipe, command):
    class SubmitAt:
        def on_batch_end(self, state):
            if state["iters"] == iters:
                recipe.controls.submit(command)

    return SubmitAt()


def test_a_resumed_run_replays_the_settings_changed_while_it_ran(tmp_path):
    recipe, opt, applied, evaluated = _steerable(tmp_path, n=20, step_s=0.0)
    change = Command(op="set", values={"lr": 0.02, "test.run_every": 7})
    recipe.callbacks.add_callback(_at(5, recipe, change))
    recipe.run(1)
    assert applied[0].changes == {"lr": [0.1, 0.02], "test.run_every": [1_000_000, 7]}
    saved = load(str(sorted(tmp_path.glob("ck_*.pth"))[-1]))
    again, opt_again, _, _ = _steerable(tmp_path / "again", n=20, step_s=0.0)
    evaluation = next(c for c in again.callbacks.callbacks() if isinstance(c, ecb.CallRecipe))
    again.load_state_dict(saved)
    assert evaluation.run_every == 1_000_000  # replayed when its run starts
    again.run(1)
    assert evaluation.run_every == 7 and opt_again.param_groups[0]["lr"] == 0.02


def test_pausing_then_resuming_changes_nothing_in_the_result(tmp_path):
    straight, _, _, _ = _steerable(tmp_path / "a", n=60, step_s=0.0)
    straight.run(1)
    paused, _, applied, _ = _steerable(tmp_path / "b", n=60, step_s=0.0)
    resume = threading.Timer(0.5, paused.controls.submit, [Command(op="resume")])
    paused.callbacks.add_callback(_at(20, paused, Command(op="pause")))
    paused.callbacks.add_callback(_at(20, paused, Command(op="eval")))  # while it waits
    resume.start()
    paused.run(1)
    assert [a.op for a in applied] == ["pause", "eval", "resume"]
    a, b = straight.model.state_dict(), paused.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stopping_a_paused_run_ends_it_without_a_resume(tmp_path):
    recipe, _, applied, _ = _steerable(tmp_path, n=60, step_s=0.0)
    recipe.callbacks.add_callback(_at(20, recipe, Command(op="pause")))
    stop = threading.Timer(0.5, recipe.stop)  # Ctrl-C, or recipe.stop() from elsewhere
    stop.start()
    run = threading.Thread(target=recipe.run, args=(1,), daemon=True)
    run.start()
    run.join(30)
    assert not run.is_alive()
    assert recipe.progress.iters == 20  # not a step after the pause
    assert [(a.op, a.client) for a in applied] == [("pause", "python"), ("stop", "local")]


HOSTILE = [
    ({"lr": math.nan}, "lr must be a finite number in [0, 10]", "got nan"),
    ({"lr": math.inf}, "lr must be a finite number in [0, 10]", "got inf"),
    ({"lr": 1e308}, "lr must be a finite number in [0, 10]", "got 1e+308"),
    ({"momentum": 2}, "momentum must be a finite number in [0, 1)", "got 2"),
    ({"momentum": 1.0}, "momentum must be a finite number in [0, 1)", "got 1.0"),
    ({"momentum": math.nan}, "momentum must be a finite number in [0, 1)", "got nan"),
    ({"lr": 0.05, "momentum": math.nan}, "momentum must be", "got nan"),  # all or nothing
    ({"accumulation": math.nan}, "accumulation must be a whole number", "got nan"),
    ({"accumulation": math.inf}, "accumulation must be a whole number", "got inf"),
    ({"accumulation": 2**62}, "accumulation must be a whole number", "got 4611686018427387904"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number in [0, 1]", "got -0.1"),
]


def test_values_outside_their_domain_are_refused_over_the_wire_and_change_nothing(running):
    recipe, opt, applied, evaluated, server, tmp_path = running

    async def try_all():
        errors = []
        async with control(server.ws_url, CONTROL) as run:
            for values, _, _ in HOSTILE:
                with pytest.raises(CommandError) as refused:
                    await run.set(**values)
                errors.append(str(refused.value))
            # the connection is still open and steers: a value inside the domain applies
            changed = await run.set(lr=0.05, momentum=0.5)
        return errors, changed

    errors, changed = asyncio.run(asyncio.wait_for(try_all(), 60))
    for error, (values, domain, value) in zip(errors, HOSTILE, strict=True):
        assert domain in error and value in error, (values, error)
    assert changed.changes == {"lr": [0.1, 0.05], "momentum": [0.9, 0.5]}
    assert [a.op for a in applied] == ["set"]  # none of the hostile ones got to the run
    group = opt.param_groups[0]
    assert group["lr"] == 0.05 and group["momentum"] == 0.5


def test_the_ctl_command_refuses_non_finite_values_in_one_line(running):
    recipe, opt, applied, evaluated, server, tmp_path = running
    base = [sys.executable, "-m", "evloop.cli", "ctl", server.ws_url, "set"]
    for word in ("lr=NaN", "lr=nan", "lr=Infinity", "lr=1e999", "momentum=2", "momentum=-inf"):
        refused = subprocess.run(
            [*base, word, "--token", CONTROL], capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 1, (word, refused.stderr)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("evloop ctl: "), (word, refused.stderr)
        assert "must be a finite number in" in lines[0]
    group = opt.param_groups[0]
    assert group["lr"] == 0.1 and group["momentum"] == 0.9 and applied == []


def test_a_declared_setting_has_a_domain_and_a_failing_setter_changes_nothing(running):
    recipe, opt, applied, evaluated, server, tmp_path = running
    dropout = {"p": 0.1}

    def broken(value):
        raise RuntimeError("the module refused it")

    recipe.controls.declare(
        "dropout",
        lambda: dropout["p"],
        lambda v: dropout.update(p=v),
        low=0.0,
        high=1.0,
        high_open=True,
    )
    recipe.controls.declare("fragile", lambda: 1.0, broken)

    async def steer():
        async with control(server.ws_url, CONTROL) as run:
            with pytest.raises(CommandError, match=r"dropout must be a finite number in \[0, 1\)"):
                await run.set(dropout=1.0)
            await run.set(dropout=0.5)
            with pytest.raises(CommandError, match="fragile: the module refused it; nothing"):
                await run.set(lr=0.02, fragile=2.0)  # lr is set first, then put back

    asyncio.run(asyncio.wait_for(steer(), 60))
    assert dropout["p"] == 0.5 and opt.param_groups[0]["lr"] == 0.1
    assert "fragile" not in recipe.controls.applied and "lr" not in recipe.controls.applied


def test_an_unreadable_setting_is_an_answer_not_a_dropped_connection(running):
    recipe, opt, applied, evaluated, server, tmp_path = running
    recipe.controls.declare("unreadable", lambda: 1 / 0, lambda v: None)

    async def steer():
        async with control(server.ws_url, CONTROL) as run:
            changed = await run.set(lr=0.03)  # the settings' values cannot all be read
            assert "unreadable" not in run.settings
            return changed

    changed = asyncio.run(asyncio.wait_for(steer(), 60))
    assert changed.changes == {"lr": [0.1, 0.03]}


def test_a_value_the_optimizer_refuses_at_its_step_is_rolled_back_and_training_goes_on(
    tmp_path, caplog
):
    recipe, opt, applied, _ = _steerable(tmp_path, n=40, step_s=0.0)
    optimizer = next(c for c in recipe.callbacks.callbacks() if isinstance(c, ecb.Optimizer))
    optimizer.settings.max_lr = 1e308  # raised explicitly: the domain admits it
    rolled = []
    recipe.bus.subscribe(rolled.append, types=[SettingsRolledBack])
    recipe.callbacks.add_callback(_at(10, recipe, Command(op="set", values={"lr": 1e308})))
    with caplog.at_level(logging.WARNING, logger="evloop"):
        recipe.run(1)
    assert recipe.progress.iters == 39  # the run went on to its end
    assert applied[0].ok and applied[0].changes == {"lr": [0.1, 1e308]}
    assert len(rolled) == 1 and rolled[0].changes == {"lr": [1e308, 0.1]}
    assert "overflow" in rolled[0].error and rolled[0].iters == 11
    assert opt.param_groups[0]["lr"] == 0.1 and recipe.controls.applied["lr"] == 0.1
    assert optimizer.steps == 39  # one step skipped
    lines = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(lines) == 1 and "lr 1e+308 → 0.1" in lines[0]


def test_a_failing_step_without_a_steered_value_still_fails_the_run(tmp_path):
    recipe, opt, applied, _ = _steerable(tmp_path, n=40, step_s=0.0)

    class Broken:
        def on_batch_end(self, state):
            if state["iters"] == 5:
                opt.param_groups[0]["lr"] = 1e308  # not through a command

    recipe.callbacks.add_callback(Broken())
    with pytest.raises(RuntimeError, match="overflow"):
        recipe.run(1)


def _scheduled(tmp_path, n=30):
    """SGD under a per-batch cosine decay, a checkpoint every 10 steps; the rate of
    each step recorded."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))

    def forward(batch):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    rates = {}

    class Rates:
        def on_batch_end(self, state):
            rates[state["iters"]] = opt.param_groups[0]["lr"]

    recipe = Recipe(forward, range(n))
    recipe.register("model", model)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            Rates(),
            ecb.Optimizer(opt),
            ecb.LRSched(sched, step_each_batch=True),
            ecb.Checkpoint(str(tmp_path / "ck_{iters}.pth"), recipe, every=10),
        ]
    )
    return recipe, model, rates


def test_a_rate_set_under_a_schedule_resumes_exactly(tmp_path):
    """A checkpoint holds the optimizer's rate and the schedule a ``set`` scaled: a
    resumed run goes on from them, never applying the change a second time."""
    straight, model, rates = _scheduled(tmp_path / "a")
    straight.callbacks.add_callback(_at(5, straight, Command(op="set", values={"lr": 0.02})))
    straight.run(1)
    again, model_again, rates_again = _scheduled(tmp_path / "b")
    again.load_state_dict(load(str(tmp_path / "a" / "ck_9.pth")))
    again.run(1)
    assert again.progress.iters == straight.progress.iters == 29
    assert [rates_again[i] for i in range(10, 30)] == [rates[i] for i in range(10, 30)]
    a, b = model.state_dict(), model_again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
