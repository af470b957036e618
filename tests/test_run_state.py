"""The run's state is explicit: running, paused, stopping, then finished, stopped or
failed — in the events, the protocol's status, summary.json and the terminal."""

import asyncio
import io
import json
import threading
import time

import pytest
import torch
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.context import RunContext
from evloop.events import BatchEnded, RunFinished, RunStateChanged
from evloop.remote import control, subscribe
from evloop.remote.protocol import Status
from evloop.run_state import IllegalTransition, RunState

CONTROL = "c0ntrol"


def _wait_for(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def _steered_run(tmp_path):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def forward(batch):
        time.sleep(0.002)
        model(torch.ones(1, 4)).sum().backward()

    recipe = Recipe(forward, range(100_000))
    recipe.register("model", model)
    terminal = io.StringIO()
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.Optimizer(opt),
            ecb.StdoutLogger(log_every=-1, stream=terminal),
            ecb.JsonlWriter(tmp_path / "events.jsonl"),
        ]
    )
    changes = []
    recipe.bus.subscribe(changes.append, types=[RunStateChanged, RunFinished], policy="block")
    return recipe, terminal, changes


def _summary_status(tmp_path):
    try:
        return json.loads((tmp_path / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def test_pause_resume_and_stop_are_states_everywhere(tmp_path):
    recipe, terminal, changes = _steered_run(tmp_path)
    server = recipe.serve(quiet=True, token="read", control_token=CONTROL)
    thread = threading.Thread(target=recipe.run, args=(1,))
    thread.start()
    statuses = []

    async def watch():
        async for message in subscribe(server.ws_url, token="read", with_status=True):
            if isinstance(message, Status):
                statuses.append(message.state)

    async def steer():
        watcher = asyncio.ensure_future(watch())
        try:
            async with control(server.ws_url, CONTROL) as run:
                paused = await run.pause()
                assert paused.changes == {"state": ["running", "paused"]}
                await _until(lambda: "paused" in statuses, "a paused status")
                await _until(lambda: _summary_status(tmp_path) == "paused", "summary: paused")
                assert recipe.run_state.now == "paused"
                resumed = await run.resume()
                assert resumed.changes == {"state": ["paused", "running"]}
                await _until(lambda: statuses[-1:] == ["running"], "running again")
                stopped = await run.stop()
                assert stopped.changes == {"state": ["running", "stopping"]}
        finally:
            watcher.cancel()

    try:
        _wait_for(lambda: recipe.progress.iters >= 3, "the run's first steps")
        asyncio.run(steer())
        thread.join(30)
        assert not thread.is_alive()
    finally:
        recipe.stop()
        thread.join(30)
        server.close()
    states = [(c.previous, c.state) for c in changes if isinstance(c, RunStateChanged)]
    assert states == [("running", "paused"), ("paused", "running"), ("running", "stopping")]
    stopping = [c for c in changes if isinstance(c, RunStateChanged)][-1]
    assert stopping.reason.startswith("stop from 127.0.0.1:")
    assert isinstance(changes[-1], RunFinished) and changes[-1].stopped
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stop_reason"] == stopping.reason
    assert recipe.run_state.now == "stopped"
    lines = terminal.getvalue().splitlines()
    commands = [line for line in lines if " from 127.0.0.1:" in line]
    assert [line.split(" from ")[0] for line in commands] == ["pause", "resume", "stop"]
    assert commands[0].endswith("state running → paused")
    assert commands[2].endswith("state running → stopping")


async def _until(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


def test_a_set_command_is_one_terminal_line_with_old_and_new(tmp_path):
    recipe, terminal, _ = _steered_run(tmp_path)
    server = recipe.serve(quiet=True, control_token=CONTROL)
    thread = threading.Thread(target=recipe.run, args=(1,))
    thread.start()

    async def steer():
        async with control(server.ws_url, CONTROL) as run:
            await run.set(lr=0.01)
            await run.stop()

    try:
        _wait_for(lambda: recipe.progress.iters >= 3, "the run's first steps")
        asyncio.run(steer())
        thread.join(30)
    finally:
        recipe.stop()
        thread.join(30)
        server.close()
    line = next(line for line in terminal.getvalue().splitlines() if line.startswith("set "))
    assert line.startswith("set from 127.0.0.1:")
    assert "after iteration" in line and line.endswith(": lr 0.1 → 0.01")


def test_early_stopping_says_why_the_run_is_stopping(tmp_path):
    losses = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    recipe = Recipe(lambda b: None, range(2))
    terminal = io.StringIO()

    class Loss:
        def on_epoch_end(self, state):
            state["metrics"]["loss"] = next(losses)

    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            Loss(),
            ecb.EarlyStopping("metrics.loss", mode="min", patience=2),
            ecb.StdoutLogger(log_every=-1, stream=terminal),
        ]
    )
    changes = []
    recipe.bus.subscribe(changes.append, types=[RunStateChanged], policy="block")
    recipe.run(5)
    assert [c.state for c in changes] == ["stopping"]
    assert changes[0].reason == "EarlyStopping: metrics.loss did not improve for 2 epochs"
    assert "stopping after iteration 5: EarlyStopping: metrics.loss" in terminal.getvalue()
    assert recipe.run_state.now == "stopped"


def test_the_state_machine_refuses_what_a_run_cannot_do():
    recipe = Recipe(lambda b: None, range(1))
    run = RunContext(recipe)
    state = RunState()
    with pytest.raises(IllegalTransition, match="the run is idle: it cannot become paused"):
        state.change(run, "paused", "pause")
    state.begin()
    state.change(run, "paused", "pause")
    state.change(run, "running", "resume")
    state.change(run, "stopping", "stop")
    for target in ("paused", "running"):
        with pytest.raises(IllegalTransition, match=f"stopping: it cannot become {target}"):
            state.change(run, target, "late command")
    state.end("stopped")
    assert state.now == "stopped"
    state.change(run, "stopped", "again")  # the same state again is no change
    with pytest.raises(AssertionError):
        state.end("paused")


def test_a_failed_run_is_failed(tmp_path):
    def forward(batch):
        raise RuntimeError("boom")

    recipe = Recipe(forward, range(3))
    recipe.callbacks.add_callback(ecb.JsonlWriter(tmp_path / "events.jsonl"))
    with pytest.raises(RuntimeError, match="boom"):
        recipe.run(1)
    assert recipe.run_state.now == "failed"
    assert _summary_status(tmp_path) == "failed"


def test_a_command_is_told_before_the_state_it_changes_and_the_status_follows_it():
    from evloop.control import Command
    from evloop.events import CommandApplied
    from evloop.remote.history import RunHistory

    recipe = Recipe(lambda b: None, range(30))
    told = []

    class PauseAt13:
        def on_batch_end(self, state):
            if state["iters"] == 13:
                recipe.controls.submit(Command(op="pause", client="ops"))

    recipe.callbacks.add_callbacks([ecb.Counter(), PauseAt13()])
    recipe.bus.subscribe(
        told.append, types=[CommandApplied, RunStateChanged, BatchEnded], every=10, policy="block"
    )

    def resume_once_paused():
        _wait_for(lambda: recipe.run_state.now == "paused", "the pause")
        recipe.controls.submit(Command(op="resume", client="ops"))

    helper = threading.Thread(target=resume_once_paused)
    helper.start()
    recipe.run(1)
    helper.join(30)
    steering = [
        (type(e).__name__, e.op if isinstance(e, CommandApplied) else e.state)
        for e in told
        if not isinstance(e, BatchEnded)
    ]
    assert steering == [
        ("CommandApplied", "pause"),
        ("RunStateChanged", "paused"),
        ("CommandApplied", "resume"),
        ("RunStateChanged", "running"),
    ]
    history = RunHistory()
    for event in told[: told.index(next(e for e in told if isinstance(e, RunStateChanged))) + 1]:
        history.update(event, None)
    # BatchEnded came every 10 steps (the last at 10), the pause says where it is
    assert history.status.state == "paused" and history.status.iters == 13
