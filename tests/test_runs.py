"""Many runs served at once: event logs read as columns, bucketed overlays, the API."""

import contextlib
import json
import math
import threading
import time
import urllib.error
import urllib.request

import msgspec
import pytest
import torch
from helpers import loss_run

from evloop.codec import encode_json
from evloop.events import BatchEnded, RunStarted, RunStateChanged
from evloop.remote.buckets import overlay, series_of
from evloop.remote.runlog import Column, RunLog
from evloop.remote.runs import RunsServer


def test_a_run_silent_for_long_without_an_end_is_listed_stale(tmp_path):
    (tmp_path / "killed").mkdir()
    lines = [RunStarted(time=1000.0, epochs=1, epoch=-1, iters=-1)]
    lines += [
        BatchEnded(time=1000.0 + i, epoch=0, iters=i, epoch_batch=i + 1, metrics={"loss": 1.0})
        for i in range(3)
    ]
    (tmp_path / "killed" / "events.jsonl").write_bytes(b"".join(map(_line, lines)))
    summary = RunLog(tmp_path / "killed").summary()
    assert summary["status"] == "stale" and "may have been killed" in summary["error"]
    assert summary["duration"] == 2.0


def _reference_buckets(x, y, lo, hi, points):
    width = (hi - lo) / points
    groups = [[] for _ in range(points)]
    for xi, yi in zip(x, y, strict=True):
        if lo <= xi <= hi and math.isfinite(yi):
            groups[min(points - 1, max(0, int((xi - lo) // width)))].append(yi)
    mean = [sum(g) / len(g) if g else math.nan for g in groups]
    return (
        mean,
        [min(g, default=math.nan) for g in groups],
        [max(g, default=math.nan) for g in groups],
    )


def _same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_buckets_equal_a_plain_reference_on_a_shared_grid():
    g = torch.Generator().manual_seed(0)
    runs, points = {}, {}
    for name, (start, n) in {"a": (0.0, 3000), "b": (40.0, 800)}.items():
        x = torch.sort(start + torch.rand(n, generator=g, dtype=torch.float64) * 60).values
        y = torch.randn(n, generator=g, dtype=torch.float64)
        y[5] = math.inf  # a diverged value: a gap, not the scale's end
        column = Column()
        for step, (seconds, value) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
            column.add(step, seconds, value)
        runs[name] = (x, y)
        points[name] = series_of(column, "time", None)
    assert series_of(column, "time", None)[0] is points["b"][0]  # made once
    shown = overlay(points, 37)
    lo = min(x[0].item() for x, _ in runs.values())
    hi = max(x[-1].item() for x, _ in runs.values())
    assert shown["bucketed"] and len(shown["x"]) == 37
    assert shown["x"][0] == pytest.approx(lo + (hi - lo) / 74)  # bucket centres
    for name, (x, y) in runs.items():
        mean, low, high = _reference_buckets(x.tolist(), y.tolist(), lo, hi, 37)
        _same(shown["runs"][name]["mean"], mean)
        _same(shown["runs"][name]["min"], low)
        _same(shown["runs"][name]["max"], high)
    assert math.isnan(shown["runs"]["b"]["mean"][0])  # b starts later: a gap there

    zoomed = overlay(points, 10, x0=45.0, x1=50.0)  # a zoom: only the points in view
    for name, (x, y) in runs.items():
        mean, _, _ = _reference_buckets(x.tolist(), y.tolist(), 45.0, 50.0, 10)
        _same(zoomed["runs"][name]["mean"], mean)


def test_few_points_are_shown_as_they_are_on_the_union_of_their_x():
    runs = {
        "a": (torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])),
        "b": (torch.tensor([1.0, 3.0]), torch.tensor([5.0, 6.0])),
    }
    shown = overlay({k: (x.double(), y.double()) for k, (x, y) in runs.items()}, 1000)
    assert not shown["bucketed"] and shown["x"] == [0.0, 1.0, 2.0, 3.0]
    _same(shown["runs"]["a"]["mean"], [1.0, 2.0, 3.0, math.nan])
    _same(shown["runs"]["b"]["max"], [math.nan, 5.0, math.nan, 6.0])
    assert msgspec.json.encode(shown["runs"]["a"]["mean"]) == b"[1.0,2.0,3.0,null]"


def _line(event):
    return encode_json(event) + b"\n"


def test_a_growing_log_is_read_line_by_line_and_a_half_line_waits(tmp_path):
    log = tmp_path / "run" / "events.jsonl"
    log.parent.mkdir()
    now = time.time()
    start = RunStarted(time=now, epochs=1, epoch=-1, iters=-1, batches_per_epoch=4)

    def batch(i, loss):
        metrics = {"loss": loss, "picture": {"$media": "media/x.png"}}
        kinds = {"loss": "scalar", "picture": "image"}
        return BatchEnded(
            time=now + i, epoch=0, iters=i, epoch_batch=i + 1, metrics=metrics, kinds=kinds
        )

    whole = _line(batch(1, 0.5))
    log.write_bytes(_line(start) + _line(batch(0, 1.0)) + whole[:20])
    run = RunLog(log.parent)
    assert run.refresh()
    assert list(run.columns) == ["train/loss"]  # the picture is no series
    assert list(run.columns["train/loss"].values) == [1.0]
    assert run.summary()["status"] == "running"
    with open(log, "ab") as file:
        file.write(whole[20:] + b'{"type":"batch_ended","ti\n' + _line(batch(2, 0.25)))
    assert run.refresh()
    column = run.columns["train/loss"]
    assert list(column.steps) == [0, 1, 2] and list(column.values) == [1.0, 0.5, 0.25]
    assert list(column.times) == pytest.approx([0.0, 1.0, 2.0])  # since the run started
    assert run.skipped == 1  # the torn line, and only it
    assert not run.refresh()  # nothing new
    log.write_bytes(_line(start) + _line(batch(0, 9.0)))  # written again from scratch
    run.refresh()
    assert list(run.columns["train/loss"].values) == [9.0]


def test_a_recorded_run_reads_as_series_a_summary_and_three_axes(tmp_path):
    loss_run(tmp_path / "one").run(2)
    run = RunLog(tmp_path / "one")
    summary = run.summary()  # from summary.json: nothing read yet
    assert summary["status"] == "finished" and summary["series"] is None
    assert summary["hparams"]["scale"] == 1.0
    run.refresh()
    summary = run.summary()
    assert summary["status"] == "finished" and summary["duration"] > 0
    assert {"train/loss", "test/loss"} <= set(summary["series"])
    column = run.columns["train/loss"]
    assert list(column.steps) == list(range(60))
    epochs, _ = series_of(column, "epoch", run.batches_per_epoch)
    assert epochs[:2].tolist() == [1 / 30, 2 / 30] and epochs[-1].item() == 2.0
    seconds, values = series_of(column, "time", run.batches_per_epoch)
    assert seconds[0].item() >= 0 and bool((seconds.diff() >= 0).all())
    assert values[1].item() == pytest.approx(0.5)
    assert list(run.columns["test/loss"].steps) == [0, 10, 20, 30, 40, 50, 59]


@pytest.fixture
def two_runs(tmp_path):
    for name, scale in (("small", 1.0), ("large", 2.0)):
        loss_run(tmp_path / "runs" / name, scale).run(1)
    with RunsServer([tmp_path / "runs"], token="t0k").start() as server:
        yield server, tmp_path / "runs"


def _get(server, path, token="t0k"):
    url = server.url.split("?")[0] + path.lstrip("/")
    if token:
        url += ("&" if "?" in url else "?") + f"token={token}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.geturl(), answer.read()


def _refused(server, path, token="t0k"):
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(server, path, token)
    return refused.value.code, refused.value.read().decode()


def test_the_api_lists_runs_and_overlays_their_series(two_runs):
    server, _ = two_runs
    listing = json.loads(_get(server, "/api/runs")[1])["runs"]
    assert sorted(r["id"] for r in listing) == ["large", "small"]
    assert {r["status"] for r in listing} == {"finished"}
    metrics = json.loads(_get(server, "/api/metrics?runs=small,large")[1])["metrics"]
    assert {"train/loss", "test/loss"} <= set(metrics)
    shown = json.loads(_get(server, "/api/series?runs=small,large&metric=train/loss")[1])
    assert shown["x"] == list(range(30)) and not shown["bucketed"]
    assert shown["runs"]["large"]["mean"] == pytest.approx([2 / (1 + b) for b in range(30)])
    assert shown["runs"]["small"]["mean"] == pytest.approx([1 / (1 + b) for b in range(30)])
    coarse = json.loads(_get(server, "/api/series?runs=small&metric=train/loss&points=3")[1])
    assert coarse["bucketed"] and len(coarse["runs"]["small"]["mean"]) == 3
    means = json.loads(_get(server, "/api/series?runs=small&metric=train/loss&stats=mean")[1])
    assert list(means["runs"]["small"]) == ["mean"]  # many runs: no bands, a third the bytes


def test_the_api_says_what_is_wrong_and_wants_the_token(two_runs):
    server, _ = two_runs
    assert _refused(server, "/api/runs", token=None)[0] == 401
    assert _refused(server, "/", token="wrong")[0] == 401
    assert _get(server, "/static/runs.js", token=None)[1].startswith(b"//")  # assets are open
    code, said = _refused(server, "/api/series?runs=small&metric=train/loss&axis=hours")
    assert code == 400 and "axis must be one of step, epoch, time" in said
    code, said = _refused(server, "/api/series?runs=small&metric=train/loss&points=0")
    assert code == 400 and "points must be between" in said
    code, said = _refused(server, "/api/series?runs=small&metric=train/loss&stats=median")
    assert code == 400 and "stats must be some of mean, min, max" in said
    code, said = _refused(server, "/api/series?runs=nope&metric=train/loss")
    assert code == 404 and "nope" in said
    assert _refused(server, "/api/series?metric=train/loss")[0] == 400


def test_each_run_has_its_own_page_behind_the_same_token(two_runs):
    server, _ = two_runs
    landed, page = _get(server, "/run/small/")
    assert "<title>evloop" in page.decode() and landed.endswith("?token=t0k")
    assert _get(server, "/run/small/")[0] == landed  # started once, then reused
    assert _refused(server, "/run/small/", token=None)[0] == 401


def test_a_live_run_is_listed_running_and_its_series_grows(tmp_path):
    folder = tmp_path / "runs" / "live"
    folder.mkdir(parents=True)
    recipe = loss_run(folder, steps=200, sleep=0.01)
    training = threading.Thread(target=recipe.run, args=(1,))
    training.start()
    try:
        deadline = time.monotonic() + 30
        while not (folder / "events.jsonl").is_file():
            assert time.monotonic() < deadline, "no event log after 30 s"
            time.sleep(0.05)
        with RunsServer([tmp_path / "runs"]).start() as server:
            seen, statuses = [], set()
            while training.is_alive() and time.monotonic() < deadline:
                shown = server.index.series(["live"], "train/loss")
                seen.append(len(shown["runs"].get("live", {}).get("mean", [])))
                statuses.add(server.index.listing()[0]["status"])
                time.sleep(0.2)
            training.join(30)
            assert "running" in statuses and seen[-1] > seen[0]
            assert server.index.listing()[0]["status"] == "finished"
            assert len(server.index.series(["live"], "train/loss")["x"]) == 200
    finally:
        training.join(30)


def _wait_for(what, condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def test_a_run_served_by_its_own_process_is_followed_listed_and_overlaid(tmp_path):
    recipe = loss_run(tmp_path / "live", steps=300, sleep=0.01)
    live = recipe.serve(quiet=True, token="l1ve", every=1)
    training = threading.Thread(target=recipe.run, args=(1,))
    try:
        training.start()
        _wait_for("the first steps", lambda: (tmp_path / "live" / "events.jsonl").is_file())
        time.sleep(0.3)  # some history first, then events
        with RunsServer([live.url], token="t0k").start() as server:
            (run_id,) = server.index.runs

            def listed():
                return server.index.listing()[0]

            _wait_for("the followed run's status", lambda: listed()["status"] == "running")
            counts = [len(server.index.series([run_id], "train/loss")["x"])]
            assert listed()["hparams"]["scale"] == 1.0 and run_id in listed()["followed"]
            _wait_for("the end", lambda: listed()["status"] == "finished")
            assert counts[0] < 300  # it was followed while it ran
            shown = server.index.series([run_id], "train/loss")
            assert shown["x"] == list(range(300))  # history, then every event (every=1)
            assert shown["runs"][run_id]["mean"][1] == pytest.approx(0.5)
            timed = server.index.series([run_id], "train/loss", axis="time")
            assert 0 < len(timed["x"]) <= 300  # history points have no time of their own
            assert listed()["evaluation"]["test/loss"] == pytest.approx(0.25)
            landed, page = _get(server, f"/run/{run_id}/")  # its page is its own server's
            assert landed.startswith(live.url.split("?")[0]) and "l1ve" in landed
    finally:
        training.join(30)
        live.close()


def test_a_server_that_is_not_there_is_listed_unreachable(tmp_path):
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with RunsServer([f"ws://127.0.0.1:{port}"]).start() as server:
        _wait_for("a failed connection", lambda: server.index.listing()[0]["status"] != "idle")
        run = server.index.listing()[0]
        assert run["status"] == "unreachable" and f"127.0.0.1:{port}" in run["error"]


def test_a_run_folder_that_appears_is_listed_without_asking(tmp_path):
    loss_run(tmp_path / "runs" / "first").run(1)
    with RunsServer([tmp_path / "runs"]).start() as server:
        loss_run(tmp_path / "runs" / "second").run(1)
        _wait_for("the rescan", lambda: len(server.index.listing()) == 2, seconds=10)
        assert sorted(server.index.runs) == ["first", "second"]


def test_a_log_read_in_chunks_equals_its_lines_taken_one_by_one(tmp_path):
    from evloop.remote.runlog import EventLine, SeriesTable

    recipe = loss_run(tmp_path / "mixed", steps=25)
    recipe.run(2)  # epoch ends repeat their last step; evaluations in between
    extra = [  # a metric appears, then one changes kind, steps go back (another run)
        BatchEnded(time=2e9, epoch=2, iters=50, epoch_batch=1, metrics={"loss": 1.0, "x": 2}),
        BatchEnded(time=2e9, epoch=2, iters=51, epoch_batch=2, metrics={"loss": "n/a"}),
        BatchEnded(time=2e9, epoch=2, iters=52, epoch_batch=3, metrics={"loss": 3.0}),
        BatchEnded(time=2e9, epoch=0, iters=0, epoch_batch=1, metrics={"loss": 9.0}),
    ]
    with open(tmp_path / "mixed" / "events.jsonl", "ab") as log:
        log.write(b"".join(map(_line, extra)))
    together = RunLog(tmp_path / "mixed")
    together.refresh()
    one_by_one = SeriesTable()
    decode = msgspec.json.Decoder(EventLine).decode
    for text in (tmp_path / "mixed" / "events.jsonl").read_bytes().splitlines():
        one_by_one.take(decode(text))
    assert sorted(together.columns) == sorted(one_by_one.columns)
    for name, column in one_by_one.columns.items():
        other = together.columns[name]
        assert list(other.steps) == list(column.steps), name
        assert list(other.values) == list(column.values), name
        assert list(other.times) == pytest.approx(list(column.times)), name
    assert list(together.columns["train/loss"].steps)[-3:] == [49, 50, 52]


def test_a_followed_address_that_is_not_a_recipe_is_listed_with_why(tmp_path):
    from websockets.sync.server import serve as sync_serve

    def handler(ws):
        ws.send("<html>")
        with contextlib.suppress(Exception):
            ws.recv(timeout=30)

    with sync_serve(handler, "127.0.0.1", 0) as impostor:
        threading.Thread(target=impostor.serve_forever, daemon=True).start()
        port = impostor.socket.getsockname()[1]
        with RunsServer([f"ws://127.0.0.1:{port}"]).start() as server:
            _wait_for("a refused greeting", lambda: server.index.listing()[0]["status"] != "idle")
            run = server.index.listing()[0]
            assert run["status"] == "unreachable"
            assert "is not an evloop server: its first frame is text '<html>'" in run["error"]
        impostor.shutdown()


def test_a_paused_run_is_not_stale_but_a_killed_one_is_whatever_its_state(tmp_path):
    """A paused run is silent by design; a run whose process is gone (this machine's)
    is stale at once, paused or not."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    (tmp_path / "paused").mkdir()
    here = {"pid": os.getpid(), "host": socket.gethostname()}
    lines = [RunStarted(time=1000.0, epochs=1, epoch=-1, iters=-1, **here)]
    lines.append(RunStateChanged(time=1001.0, state="paused", previous="running", iters=3))
    (tmp_path / "paused" / "events.jsonl").write_bytes(b"".join(map(_line, lines)))
    assert RunLog(tmp_path / "paused").summary()["status"] == "paused"  # silent, alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = {"pid": child.pid, "host": socket.gethostname()}
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    (tmp_path / "killed").mkdir()
    lines = [RunStarted(time=time.time(), epochs=1, epoch=-1, iters=-1, **gone)]
    lines.append(RunStateChanged(time=time.time(), state="paused", previous="running"))
    (tmp_path / "killed" / "events.jsonl").write_bytes(b"".join(map(_line, lines)))
    summary = RunLog(tmp_path / "killed").summary()
    assert summary["status"] == "stale"
    assert f"its process (pid {child.pid}) is gone" in summary["error"]
