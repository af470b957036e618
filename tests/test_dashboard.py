"""The live dashboard in real headless Chromium, during a real training run."""

import json
import re
import threading
import time
import warnings

import pytest
import torch
from browser import needs_chromium, watch_errors
from torch import nn

import evloop.callbacks as ecb
from evloop import Recipe, context
from evloop.callbacks.sync_check import SYNC_WARNING
from evloop.events import RanksSampled
from evloop.reports import Report

pytestmark = needs_chromium


def _training(tmp_path, n=600, step_s=0.01, report=None):
    def forward(batch):
        time.sleep(step_s)
        return {"loss": torch.tensor(1.0 / (1 + batch))}

    test_loop = Recipe(lambda b: {"loss": torch.tensor(0.25)}, range(2))
    test_loop.callbacks.add_callback(ecb.Log("loss", "loss"))
    recipe = Recipe(forward, range(n))
    recipe.hparams.update(seed=7)
    callbacks = [
        ecb.Counter(),
        ecb.Log("loss", "loss"),
        ecb.CallRecipe(test_loop, 100),
        ecb.SystemMetrics(every_s=0.1),
        ecb.JsonlWriter(tmp_path / "events.jsonl"),
    ]
    if report is not None:
        callbacks.append(report)
    recipe.callbacks.add_callbacks(callbacks)
    return recipe


def _run_aside(recipe):
    thread = threading.Thread(target=recipe.run, args=(1,))
    thread.start()
    thread.join()


def _shown(page, key):
    return page.evaluate(
        "(key) => { const s = series.get(key); return s ? [s.xs, s.ys] : null; }", key
    )


def test_charts_follow_the_run_and_history_survives_a_reload(tmp_path, browser):
    recipe = _training(tmp_path)
    server = recipe.serve(token="tok", quiet=True, every=1)
    page = browser.new_page()
    errors = watch_errors(page)
    thread = threading.Thread(target=recipe.run, args=(1,))
    try:
        page.goto(server.url)
        thread.start()
        page.wait_for_function(
            "() => series.has('train/loss') && series.get('train/loss').xs.length > 50",
            timeout=30_000,
        )
        page.wait_for_selector(".chart[data-metric='loss'] canvas")
        assert page.text_content("#state") == "running"
        before = _shown(page, "train/loss")

        page.reload()  # mid-run: the history comes back, then live events go on
        page.wait_for_function(
            "(n) => series.has('train/loss') && series.get('train/loss').xs.length > n",
            arg=len(before[0]),
            timeout=30_000,
        )
        after = _shown(page, "train/loss")
        assert after[0][: len(before[0])] == before[0]  # nothing lost by the reload
        thread.join()
        page.wait_for_function(
            "() => /^finished in \\d+s$/.test(document.querySelector('#state').textContent)",
            timeout=30_000,
        )
        assert page.text_content("#epoch") == "1 / 1"  # 1-based, like its total
        assert page.evaluate("() => document.getElementById('hparams-section').hidden") is False
        # the run's hyper-parameters: the epochs asked, the loader's length, the user's
        assert page.text_content("#hparams") == "epochs1total_epochs1batches_per_epoch600seed7"
        system_ys = _shown(page, "system/ram_percent")[1]  # sampled beside training
        assert system_ys and all(0 < y < 100 for y in system_ys)
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        xs, ys = _shown(page, "train/loss")
        test_xs, test_ys = _shown(page, "test/loss")
        iters_shown = page.text_content("#iters")
        page.close()  # before the server goes: the page would retry and log each refusal
    finally:
        thread.join()
        server.close()

    logged = {}
    for line in (tmp_path / "events.jsonl").read_bytes().splitlines():
        event = json.loads(line)
        if event["type"] == "batch_ended":
            logged[event["iters"]] = event["metrics"]["loss"]
    # what the page shows is what the run logged, in order, up to the last step (per-step
    # points coalesce only if the page falls 256 events behind, as on a loaded machine)
    assert xs == sorted(set(xs)) and xs[-1] == 599 and len(xs) >= 300
    assert all(abs(y - logged[x]) < 1e-6 for x, y in zip(xs, ys, strict=True))
    assert test_xs == [0, 100, 200, 300, 400, 500, 599] and set(test_ys) == {0.25}
    assert iters_shown == "599"
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert errors == []


def test_reports_cannot_run_script_in_the_page(tmp_path, browser):
    hostile = "<b id='cls'>class <i>x</i></b><script>parent.document.title='pwned'</script>"

    class PostReport:
        def on_batch_end(self, state):
            state["metrics"]["report"] = Report(lambda: hostile)

    recipe = _training(tmp_path, n=50, step_s=0.005, report=PostReport())
    server = recipe.serve(quiet=True)
    page = browser.new_page()
    try:
        page.goto(server.url)
        _run_aside(recipe)  # playwright's sync API holds an event loop in this thread
        frame = page.wait_for_selector("iframe[title='train/report']")
        assert frame.get_attribute("sandbox") == "allow-same-origin"  # scripts never run
        page.wait_for_function(
            "() => document.querySelector('iframe[title=\"train/report\"]').srcdoc.includes('cls')"
        )
        time.sleep(0.3)
        assert "pwned" not in page.title() and page.title().startswith("evloop — ")
        height = page.evaluate(  # sized to its content: one line, not a fixed box
            "() => document.querySelector('iframe[title=\"train/report\"]').offsetHeight"
        )
        assert 0 < height < 100
    finally:
        server.close()


def test_the_page_reconnects_when_the_server_restarts(tmp_path, browser):
    recipe = _training(tmp_path, n=20, step_s=0.0)
    server = recipe.serve(quiet=True, every=1)
    port = server.port
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_function("() => document.querySelector('#connection').textContent === 'live'")
    server.close()
    page.wait_for_function(
        "() => document.querySelector('#connection').textContent !== 'live'", timeout=10_000
    )
    again = recipe.serve(port=port, quiet=True, every=1)
    try:
        _run_aside(recipe)
        page.wait_for_function(
            "() => series.has('train/loss') && series.get('train/loss').xs.length === 20",
            timeout=20_000,
        )
        assert page.text_content("#connection") == "live"
    finally:
        again.close()


def test_the_page_steers_the_run_with_the_control_token_only(tmp_path, browser):
    import evloop.callbacks as callbacks

    recipe = _training(tmp_path, n=100_000, step_s=0.01)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    recipe.callbacks.add_callback(callbacks.Optimizer(opt))
    server = recipe.serve(quiet=True, token="read", control_token="ctl")
    thread = threading.Thread(target=recipe.run, args=(1,))
    thread.start()
    try:
        reader = browser.new_page()
        reader.goto(server.url.replace("token=read", "token=read"))
        reader.wait_for_function("() => document.querySelector('#run-name').textContent !== ''")
        assert reader.is_hidden("#controls")  # a read token may only watch
        reader.close()

        page = browser.new_page()
        errors = watch_errors(page)
        page.goto(server.url.replace("token=read", "token=ctl"))
        page.wait_for_selector("#controls button[data-op=pause]", state="visible")
        # the throughput of a run doing ~100 steps a second, from the events' times
        page.wait_for_function(
            "() => /it\\/s/.test(document.querySelector('#throughput').textContent)"
        )
        time.sleep(1.5)
        shown = float(page.text_content("#throughput").split()[0])
        assert 50 < shown < 110, shown
        page.click("#controls button[data-op=pause]")
        page.wait_for_function(
            "() => document.querySelector('#command-status').textContent"
            " === 'pause applied: state running → paused'"
        )
        # a paused run says so: no pace, no ETA
        page.wait_for_function("() => document.querySelector('#state').textContent === 'paused'")
        assert page.text_content("#throughput") == "–" and page.text_content("#eta") == "–"
        paused_at = recipe.progress.iters
        page.fill("#set-value", "0.05")
        page.click("#set-form button")
        page.wait_for_function(
            "() => document.querySelector('#command-status').textContent.includes('0.1 → 0.05')"
        )
        assert recipe.progress.iters == paused_at
        # the settings as they are now, and the change among the notices
        page.wait_for_function(
            "() => document.querySelector('#settings').textContent.includes('lr0.05')"
        )
        assert "set from" in page.text_content("#notices")
        page.click("#controls button[data-op=resume]")
        page.wait_for_function(
            "() => document.querySelector('#command-status').textContent"
            " === 'resume applied: state paused → running'"
        )
        page.wait_for_function("() => document.querySelector('#state').textContent === 'running'")
        deadline = time.monotonic() + 30
        while recipe.progress.iters == paused_at and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recipe.progress.iters > paused_at and opt.param_groups[0]["lr"] == 0.05
        page.click("#controls button[data-op=stop]")
        thread.join(30)
        assert not thread.is_alive() and recipe.progress.iters < 99_999
        page.close()
        assert errors == []
    finally:
        recipe.stop()
        thread.join(30)
        server.close()


def test_smoothing_log_scale_and_csv_of_a_finished_run(tmp_path, browser):
    recipe = _training(tmp_path, n=200, step_s=0.0)
    server = recipe.serve(token="tok", quiet=True, every=1)
    recipe.run(1)
    page = browser.new_page(accept_downloads=True)
    errors = watch_errors(page)
    try:
        page.goto(server.url)
        page.wait_for_function(
            "() => /^finished/.test(document.querySelector('#state').textContent)"
            " && series.has('train/loss') && series.get('train/loss').xs.length === 200"
        )
        xs, ys = _shown(page, "train/loss")
        drawn = (
            "() => { const c = charts.get('loss');"
            " return c.plot.data[1 + c.sources.indexOf('train')]; }"
        )
        assert page.evaluate(drawn) == pytest.approx(ys)  # unsmoothed at first

        page.fill("#smoothing", "0.9")  # a range input: set, then 'input' fires
        page.dispatch_event("#smoothing", "input")
        last, expected = 0.0, []
        for n, y in enumerate(ys, start=1):  # the debiased EMA
            last = 0.9 * last + 0.1 * y
            expected.append(last / (1 - 0.9**n))
        assert page.evaluate(drawn) == pytest.approx(expected, rel=1e-9)
        assert page.text_content("#smoothing-value") == "0.90"

        assert page.evaluate("() => charts.get('loss').plot.scales.y.distr") == 1
        page.check("#log-scale")
        assert page.evaluate("() => charts.get('loss').plot.scales.y.distr") == 3
        assert page.evaluate(drawn) == pytest.approx(expected, rel=1e-9)  # still smoothed

        with page.expect_download() as download:
            page.click(".chart[data-metric='loss'] .csv")
        rows = download.value.path().read_text().splitlines()
        assert download.value.suggested_filename == "loss.csv"
        header = rows[0].split(",")
        assert sorted(header) == ["iteration", "test", "train"] and header[0] == "iteration"
        columns = dict(
            zip(header, zip(*(row.split(",") for row in rows[1:]), strict=True), strict=True)
        )
        assert [int(x) for x in columns["iteration"]] == xs  # evaluations on training steps
        assert [float(y) for y in columns["train"]] == pytest.approx(ys)  # raw, not smoothed
        assert {y for y in columns["test"] if y} == {"0.25"}

        axis = "() => charts.get('loss').plot.data[0]"
        page.select_option("#axis", "epoch")
        assert page.evaluate(axis)[:2] == pytest.approx([1 / 200, 2 / 200])  # epochs done
        page.select_option("#axis", "time")
        seconds = page.evaluate(axis)  # the events' own times, from the run's start
        assert 0 <= seconds[0] < seconds[-1] < 60 and seconds == sorted(seconds)
        assert page.text_content(".chart[data-metric='loss'] .u-legend").startswith(
            "seconds since start"
        )

        # a long run: the page keeps at most 20,000 points a series, the newest included
        page.evaluate("() => { for (let i = 0; i < 26000; i++) addPoint('train/long', i, 1, i); }")
        kept = page.evaluate("() => series.get('train/long').xs")
        assert len(kept) <= 20_000 and kept[-1] == 25_999 and kept[:3] == [0, 2, 4]
        page.close()
    finally:
        server.close()
    assert errors == []


def test_notices_show_as_they_happen_and_come_back_with_a_reload(browser):
    class SyncsEachStep:
        """Stands for ``.item()`` on a CUDA tensor: torch's sync debug mode warns there."""

        def on_batch_end(self, state):
            if state["iters"] >= 20:
                warnings.warn(SYNC_WARNING, UserWarning, stacklevel=1)

    class RankTimes:
        """Stands for rank 0 of a distributed run, which publishes every rank's times."""

        def on_batch_end(self, state):
            if state["iters"] % 10 == 0:
                sampled = RanksSampled(
                    step=state["iters"], step_s=[0.02, 0.02], busy_s=[0.01, 0.018], slowest=1
                )
                context.current().publish(sampled)

    model = nn.Linear(1, 1)

    def slow_evaluation(batch, model):
        time.sleep(0.3)  # several evaluations come due meanwhile: they are skipped
        return {"loss": torch.tensor(0.0)}

    def train_step(batch):
        time.sleep(1.0 if batch == 40 else 0.01)  # stuck for a while in step 40
        return {"loss": torch.tensor(1.0)}

    test_loop = Recipe(slow_evaluation, range(1))
    test_loop.register("model", model)
    recipe = Recipe(train_step, range(300))
    recipe.register("model", model)
    recipe.callbacks.add_callbacks(
        [
            ecb.Counter(),
            ecb.SyncCheck(after=3),
            SyncsEachStep(),
            ecb.CallRecipe(test_loop, 10),
            ecb.Watchdog(stall_s=0.5, sample_s=0.1),
            RankTimes(),
        ]
    )
    server = recipe.serve(quiet=True)
    page = browser.new_page()
    errors = watch_errors(page)
    thread = threading.Thread(target=recipe.run, args=(1,))
    shown = "els => els.map(e => e.firstChild.textContent)"
    try:
        page.goto(server.url)
        thread.start()
        page.wait_for_function(
            "() => document.querySelectorAll('#notices li.info').length >= 2"
            " && document.querySelector('#notices').textContent.includes('no step boundary')",
            timeout=30_000,
        )
        live = page.eval_on_selector_all("#notices li", shown)
        assert "iteration 20: the host waited for the device in SyncsEachStep.on_batch_end" in live
        assert any(
            line.endswith(
                "evaluation test skipped: the previous one was still running (1 skipped so far)"
            )
            for line in live
        )
        stall = next(line for line in live if "no step boundary" in line)
        assert re.match(
            r"rank 0: no step boundary for 0\.\d s after iteration 40: in train_step", stall
        )
        stacks = page.eval_on_selector_all(
            "#notices li.warning pre", "els => els.map(e => e.textContent)"
        )
        assert any("on_batch_end" in stack for stack in stacks)  # the stack of the sync
        assert any("time.sleep(1.0 if batch == 40" in stack for stack in stacks)  # the stall's
        # each rank's time per step, one line per rank, and the slowest rank
        page.wait_for_selector(".chart[data-metric='busy_s'] canvas")
        assert page.evaluate("() => charts.get('busy_s').sources") == ["rank 0", "rank 1"]
        assert page.text_content("#slowest") == "rank 1 (busy 0.018 s/step)"
        thread.join()
        page.reload()  # the notices come back with the history
        page.wait_for_selector("#notices li.warning")
        again = page.eval_on_selector_all("#notices li", shown)
        assert again[-1] == live[-1] and len(again) >= len(live)  # oldest last, kept
        assert stall in again
        page.close()
    finally:
        thread.join()
        server.close()
    assert errors == []
