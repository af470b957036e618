"""Inside a running step: the sampled breakdown (StepBreakdown) and profiling on demand
over the real protocol, the CLI and HTTP."""

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from browser import CHROMIUM, watch_errors
from helpers import wait_for
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.callbacks.breakdown import verdict
from evloop.control import CommandError
from evloop.events import ProfileReport, StepTimes
from evloop.remote import control

CONTROL = "c0ntrol"


class SlowLoader:
    """Batches that take ``wait_s`` each to produce (a loader starved of workers)."""

    def __init__(self, n: int, wait_s: float) -> None:
        self.n, self.wait_s = n, wait_s

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            time.sleep(self.wait_s)
            yield i


class Sleeper:
    """A callback whose batch end takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_batch_end(self, state):
        time.sleep(self.seconds)


def _recipe(loader, step_s=0.0, callbacks=()):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    calls = []

    def forward(batch):
        calls.append(time.perf_counter())
        time.sleep(step_s)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss}

    recipe = Recipe(forward, loader)
    recipe.register("model", model)
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt), *callbacks])
    return recipe, calls


def test_the_breakdown_sums_to_the_step_and_a_slow_loader_shows_as_data_wait():
    breakdown = ecb.StepBreakdown(every=2)
    recipe, calls = _recipe(SlowLoader(16, 0.08), 0.005, [Sleeper(0.004), breakdown])
    seen = []
    recipe.bus.subscribe(seen.append, types=[StepTimes])
    recipe.run(1)
    assert [s.iters for s in seen] == list(range(0, 16, 2))  # one step in two, in order
    # the step as the forward function saw it: from one call to the next
    measured = statistics.median(b - a for a, b in zip(calls, calls[1:], strict=False))
    for sample in seen[1:]:
        assert list(sample.parts) == ["data", "forward", "optimizer", "callbacks", "engine"]
        assert sum(sample.parts.values()) == pytest.approx(sample.step_s, rel=1e-9)
        assert sample.clock == "monotonic"
    summed = statistics.median(sum(s.parts.values()) for s in seen[1:])
    assert summed == pytest.approx(measured, rel=0.10)
    data = statistics.median(s.parts["data"] / s.step_s for s in seen[1:])
    assert data > 0.5  # 80 ms of loader in a ~90 ms step
    assert all(s.parts["forward"] >= 0.005 for s in seen)
    assert all(s.callbacks["Sleeper"] >= 0.004 for s in seen)
    assert all(s.parts["optimizer"] > 0 for s in seen)
    assert "% of the step waits for the loader: raise num_workers" in seen[-1].verdict


def test_a_callback_that_dominates_is_named_and_no_verdict_when_nothing_does():
    parts = dict.fromkeys(["data", "forward", "optimizer", "callbacks", "engine"], 0.0)
    slow = StepTimes(
        iters=1,
        step_s=1.0,
        parts={**parts, "callbacks": 0.8, "forward": 0.2},
        callbacks={"ConfusionMatrix": 0.7, "Log": 0.1},
    )
    said = verdict([slow])
    assert said.startswith("80% of the step is in callbacks, 70% in ConfusionMatrix")
    even = StepTimes(iters=1, step_s=1.0, parts={**parts, "data": 0.4, "forward": 0.4})
    assert verdict([even]) == ""


def test_no_breakdown_no_marks_and_bad_settings_are_refused():
    recipe, _ = _recipe(range(5))
    seen = []
    recipe.bus.subscribe(seen.append, types=[StepTimes])
    recipe.run(1)
    assert seen == []
    with pytest.raises(ValueError, match="every must be a whole number of steps >= 1"):
        ecb.StepBreakdown(every=0)
    with pytest.raises(ValueError, match="dominant must be a fraction"):
        ecb.StepBreakdown(dominant=1.5)


def _served(tmp_path, breakdown=True, folder=True):
    extra = [ecb.StepBreakdown(every=5)] if breakdown else []
    if folder:
        extra.append(ecb.JsonlWriter(tmp_path / "events.jsonl"))
    recipe, _ = _recipe(range(100_000), 0.002, extra)
    server = recipe.serve(quiet=True, token="read", control_token=CONTROL)
    thread = threading.Thread(target=recipe.run, args=(1,))
    thread.start()
    wait_for(lambda: recipe.progress.iters >= 3, "the run's first steps")
    return recipe, server, thread


@pytest.fixture
def served(tmp_path):
    recipe, server, thread = _served(tmp_path)
    yield recipe, server, tmp_path
    recipe.stop()
    thread.join(30)
    server.close()


def test_a_profile_over_the_protocol_writes_a_trace_and_a_second_is_refused(served):
    recipe, server, folder = served
    reports = []
    recipe.bus.subscribe(reports.append, types=[ProfileReport])

    async def profile():
        async with control(server.ws_url, CONTROL) as run:
            long = asyncio.ensure_future(run.profile(steps=40))
            await asyncio.sleep(0)  # sent; its CommandResult may not be back yet
            async with control(server.ws_url, CONTROL) as other:
                wait = time.monotonic() + 10
                while True:  # the first is accepted as soon as it is submitted
                    try:
                        await other.send("profile", {"steps": 5})
                    except CommandError as refused:
                        return await long, str(refused)
                    assert time.monotonic() < wait, "a second profile was never refused"

    report, refusal = asyncio.run(asyncio.wait_for(profile(), 60))
    assert "a profile is already running" in refusal and "wait for its report" in refusal
    assert report.ok and report.last - report.first + 1 == 40 and report.rank == 0
    assert report.path == f"profiles/profile-{report.first}-{report.last}-rank0.json"
    with open(folder / report.path) as file:
        trace = json.load(file)
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert sum(name.startswith("ProfilerStep#") for name in names) == 40  # a marker a step
    assert any(name.startswith("aten::") for name in names)  # the model's operators
    assert report.top and all(op["self_s"] >= 0 and op["calls"] >= 1 for op in report.top)
    assert report.top == sorted(report.top, key=lambda op: -op["self_s"])
    assert not any(op["name"].startswith("ProfilerStep") for op in report.top)  # no operator
    assert set(report.breakdown) == {"data", "forward", "optimizer", "callbacks", "engine"}
    assert report.step_s is not None and report.step_s > 0.002
    # served, contained in the run folder, with the read token
    name = report.path.split("/")[-1]
    base = server.url.split("?")[0].rstrip("/")
    with urllib.request.urlopen(f"{base}/profiles/{name}?token=read", timeout=10) as answer:
        assert json.loads(answer.read())["traceEvents"]
    for bad in [f"{name}?token=wrong", "..%2Fevents.jsonl?token=read", "x.json?token=read"]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/profiles/{bad}", timeout=10)
        assert refused.value.code in (401, 404)
    # the next profile is accepted once the report is out
    again = asyncio.run(asyncio.wait_for(_profile(server, 2), 60))
    assert again.ok and again.first > report.last


async def _profile(server, steps):
    async with control(server.ws_url, CONTROL) as run:
        return await run.profile(steps=steps)


def test_bad_profile_commands_are_refused_with_the_reason(served):
    recipe, server, folder = served

    async def refusals():
        said = []
        async with control(server.ws_url, CONTROL) as run:
            for values in [
                {"steps": 0},
                {"steps": 5000},
                {"steps": "x"},
                {"ranks": "some"},
                {"steps": 2, "every": 1},
            ]:
                with pytest.raises(CommandError) as refused:
                    await run.send("profile", values)
                said.append(str(refused.value))
        return said

    said = asyncio.run(asyncio.wait_for(refusals(), 60))
    assert said[0] == "profile steps must be a whole number from 1 to 1000, got 0"
    assert said[1] == "profile steps must be a whole number from 1 to 1000, got 5000"
    assert said[2] == "profile steps must be a whole number from 1 to 1000, got 'x'"
    assert said[3] == "profile ranks must be 'main' or 'all', got 'some'"
    assert said[4] == "profile takes steps and ranks, not 'every'"
    assert not (folder / "profiles").exists()


def test_a_run_without_a_folder_refuses_to_profile(tmp_path):
    recipe, server, thread = _served(tmp_path, breakdown=False, folder=False)
    try:
        with pytest.raises(CommandError, match="profile needs a run folder"):
            asyncio.run(asyncio.wait_for(_profile(server, 3), 60))
    finally:
        recipe.stop()
        thread.join(30)
        server.close()


def test_the_ctl_command_profiles_and_prints_the_top_operators(served):
    recipe, server, folder = served
    base = [sys.executable, "-m", "evloop.cli", "ctl", server.ws_url]
    done = subprocess.run(
        [*base, "profile", "--steps", "3", "--token", CONTROL],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "evloop ctl: profiled iterations" in done.stdout and "on rank 0" in done.stdout
    assert "ms self" in done.stdout and "breakdown: data" in done.stdout
    traces = list((folder / "profiles").glob("profile-*-rank0.json"))
    assert len(traces) == 1 and json.loads(traces[0].read_text())["traceEvents"]
    refused = subprocess.run(
        [*base, "profile", "--steps", "2000", "--token", CONTROL],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "from 1 to 1000" in refused.stderr


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_page_draws_the_breakdown_and_profiles_from_its_button(tmp_path, browser):
    from evloop.remote.replay import serve_folder

    extra = [ecb.StepBreakdown(every=2), ecb.JsonlWriter(tmp_path / "events.jsonl")]
    recipe, _ = _recipe(SlowLoader(100_000, 0.02), 0.002, [Sleeper(0.001), *extra])
    server = recipe.serve(quiet=True, token="read", control_token=CONTROL)
    thread = threading.Thread(target=recipe.run, args=(1,))
    thread.start()
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        errors = watch_errors(page)
        page.goto(server.url.replace("token=read", f"token={CONTROL}"))
        page.wait_for_selector("#breakdown-section", state="visible")
        page.wait_for_function(
            "() => /waits for the loader/.test(document.querySelector('#verdict').textContent)"
        )
        page.wait_for_function("() => steps.xs.length >= 5")
        shown = page.evaluate("() => [steps.xs.slice(-3), steps.parts.map((p) => p.at(-1))]")
        assert all(x % 2 == 0 for x in shown[0]) and shown[1][0] > 15  # data: ~20 ms
        assert "Sleeper" in page.text_content("#breakdown-callbacks")
        page.fill("#profile-steps", "4")
        page.click("#profile-form button")
        link = page.wait_for_selector(".profile a[download]")
        answer = page.request.get(link.evaluate("(a) => a.href"))
        assert answer.ok and json.loads(answer.body())["traceEvents"]
        assert "aten::" in page.text_content(".profile .operators")
        page.screenshot(path=str(tmp_path / "breakdown.png"), full_page=True)
        recipe.stop()
        thread.join(30)
        page.close()
        assert errors == []
        # the same page for the run's folder (evloop serve), from its event log
        replay = serve_folder(tmp_path, token="read")
        try:
            again = browser.new_page()
            again.goto(replay.url)
            again.wait_for_selector(".profile a[download]")
            assert again.evaluate("() => steps.xs.length") >= 5
            href = again.eval_on_selector(".profile a[download]", "(a) => a.href")
            assert again.request.get(href).ok
        finally:
            replay.close()
    finally:
        recipe.stop()
        thread.join(30)
        server.close()


@pytest.mark.slow
def test_under_torchrun_a_profile_asked_on_rank_0_runs_on_every_rank_when_asked(tmp_path):
    script = Path(__file__).parent / "scripts" / "ddp_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), str(tmp_path), "--epochs", "3"]
    done = subprocess.run(
        [*command, "--profile", "all"], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    traces = sorted(p.name for p in (tmp_path / "profiles").iterdir())
    assert [t.split("-rank")[1] for t in traces] == ["0.json", "1.json"]
    assert traces[0].split("-rank")[0] == traces[1].split("-rank")[0]  # the same steps
    for name in traces:
        events = json.loads((tmp_path / "profiles" / name).read_text())["traceEvents"]
        assert sum(e.get("name", "").startswith("ProfilerStep#") for e in events) == 3
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    reports = [e for e in map(json.loads, lines) if e["type"] == "profile_report"]
    assert len(reports) == 1 and reports[0]["ok"] and reports[0]["rank"] == 0
    assert reports[0]["last"] - reports[0]["first"] == 2 and reports[0]["id"] == "asked"


def test_on_cuda_a_step_is_read_once_its_events_completed_never_waiting(monkeypatch):
    """The CUDA path's bookkeeping, with stand-in events (no GPU here): a sampled step's
    durations come only after its last event reports complete, and no event is ever
    waited for while the run goes on."""
    from evloop import _step_timer

    complete = {"now": False}
    waited = []

    class Event:
        def __init__(self, enable_timing: bool) -> None:
            self.at = 0.0

        def record(self) -> None:
            self.at = time.perf_counter()

        def query(self) -> bool:
            return complete["now"]

        def synchronize(self) -> None:
            waited.append(self)

        def elapsed_time(self, other) -> float:
            return (other.at - self.at) * 1e3

    monkeypatch.setattr(_step_timer.torch.cuda, "Event", Event)
    timer = _step_timer.StepTimer(every=1, cuda=True)
    timer.boundary(0)
    timer.mark("data")
    time.sleep(0.002)
    timer.mark("forward")
    timer.boundary(1)  # step 0 is marked, its events not complete: nothing yet
    assert not timer.done and not waited
    complete["now"] = True
    timer.mark("data")
    timer.boundary(2)  # both steps' events completed: read, oldest first
    assert [iters for iters, _ in timer.done] == [0, 1] and not waited
    labels = [label for label, _ in timer.done[0][1]]
    assert labels == ["data", "forward", "engine"] and timer.done[0][1][1][1] >= 0.002
    timer.flush()  # at a run's end only
    assert not waited  # nothing was pending


def test_a_run_that_ends_or_fails_during_a_profile_reports_it_and_frees_the_profiler(tmp_path):
    from evloop.control import Command

    class Ask:
        def __init__(self, at, fail_at=None):
            self.at, self.fail_at = at, fail_at

        def on_batch_end(self, state):
            if state["iters"] == self.at:
                recipe.controls.submit(Command(op="profile", values={"steps": 100}, id="p"))
            if state["iters"] == self.fail_at:
                raise RuntimeError("planted")

    recipe, _ = _recipe(range(10), 0.0, [Ask(3), ecb.JsonlWriter(tmp_path / "events.jsonl")])
    reports = []
    recipe.bus.subscribe(reports.append, types=[ProfileReport])
    recipe.run(1)
    assert len(reports) == 1 and not reports[0].ok and reports[0].path
    assert reports[0].error == "the run ended before the last step"
    assert (reports[0].first, reports[0].last) == (4, 9)
    assert json.loads((tmp_path / reports[0].path).read_text())["traceEvents"]
    # a run that fails while profiling stops the profiler: the next profile is accepted
    failing, _ = _recipe(range(10), 0.0, [Ask(2, fail_at=5), ecb.JsonlWriter(tmp_path / "f.jsonl")])
    recipe = failing
    with pytest.raises(RuntimeError, match="planted"):
        failing.run(1)
    assert not failing.controls.profiler.active
    failing.controls.submit(Command(op="profile", values={"steps": 2}))  # not refused
