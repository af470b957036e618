"""Run folders and client messages as an attacker writes them: links out of the folder,
names that climb, lines and messages nested 100,000 deep, runs killed without an end.
Real files, real servers, real sockets."""

import asyncio
import json
import logging
import os
import time
import urllib.error
import urllib.request

import msgspec
import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.codec import encode_json
from evloop.events import BatchEnded, EvalFinished, RunFinished, RunStarted
from evloop.remote.replay import serve_folder
from evloop.remote.runs import RunsServer

DEEP = "[" * 100_000 + "]" * 100_000
MEDIA = "0123456789abcdef" * 2  # a content name's shape


def _line(event):
    return encode_json(event) + b"\n"


def _run_folder(folder, start=None, ended=True, extra=b""):
    """A run folder with a real event log: 5 steps, and its end unless not ``ended``."""
    folder.mkdir(parents=True)
    start = time.time() if start is None else start
    events = [RunStarted(time=start, epochs=1, epoch=-1, iters=-1, batches_per_epoch=5)]
    events += [
        BatchEnded(
            time=start + i, epoch=0, iters=i, epoch_batch=i + 1, metrics={"loss": 1.0 / (i + 1)}
        )
        for i in range(5)
    ]
    data = b"".join(map(_line, events)) + extra
    if ended:
        data += _line(RunFinished(time=start + 5, epoch=0, iters=4))
    (folder / "events.jsonl").write_bytes(data)
    return folder


def _get(url):
    """(status, body) of a GET, an error status included."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def _first_frame(url):
    async with connect(url) as ws:
        return json.loads(await ws.recv())


def _ws(server):
    return server.ws_url + (f"?token={server.token}" if server.token else "")


@pytest.fixture
def outside(tmp_path):
    """A secret file and a JSON file outside every run folder."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"status": "leaked", "error": "read from elsewhere"}))
    return tmp_path


def test_media_leading_outside_the_run_folder_are_404_and_logged_once(outside, caplog):
    run = _run_folder(outside / "runs" / "a")
    (run / "media").mkdir()
    (run / "media" / f"{MEDIA}.png").write_bytes(b"\x89PNG kept")
    (run / "media" / f"{MEDIA[::-1]}.png").symlink_to(outside / "secret.txt")
    (run / "media" / f"{'f' * 32}.png").symlink_to("/etc/passwd")
    (outside / "runs" / "a" / "media" / f"{'e' * 32}.png").symlink_to("../../../secret.txt")
    server = serve_folder(run, quiet=True)
    root = server.url.split("?")[0]
    try:
        with caplog.at_level(logging.WARNING, logger="evloop"):
            assert _get(f"{root}media/{MEDIA}.png") == (200, b"\x89PNG kept")
            for name in (MEDIA[::-1], "f" * 32, "e" * 32):
                for _ in range(3):  # refused each time, logged once
                    assert _get(f"{root}media/{name}.png")[0] == 404
            hard_to_spot = [
                "..%2f..%2fsecret.txt",
                "%2e%2e/%2e%2e/secret.txt",
                f"{MEDIA}.png%00.txt",
                f"{MEDIA}.png%0a",
                f"{MEDIA.upper()}.png",
                f"{MEDIA}.PNG",
                f"{MEDIA}.png/",
                f"{MEDIA[:-1]}%d0%b0.png",  # a Cyrillic a
                "/etc/passwd",
                "%2fetc%2fpasswd",
            ]
            for name in hard_to_spot:
                assert _get(f"{root}media/{name}")[0] in (400, 404), name
    finally:
        server.close()
    refusals = [r.getMessage() for r in caplog.records if "leads outside" in r.getMessage()]
    assert len(refusals) == 3, refusals
    assert all(r.exc_info is None for r in caplog.records)


def test_a_summary_leading_outside_is_not_served_and_a_log_leading_outside_is_unreadable(
    outside,
):
    runs = outside / "runs"
    linked_summary = _run_folder(runs / "summary-linked")
    (linked_summary / "summary.json").symlink_to(outside / "elsewhere.json")
    linked_log = runs / "log-linked"
    linked_log.mkdir()
    (linked_log / "events.jsonl").symlink_to(outside / "secret.txt")
    _run_folder(runs / "fine")
    server = RunsServer([runs]).start(warm=False)
    try:
        status, body = _get(server.url + "api/runs")
        listed = {run["id"]: run for run in json.loads(body)["runs"]}
        page = _get(server.run_url("log-linked"))
    finally:
        server.close()
    assert status == 200 and set(listed) == {"summary-linked", "log-linked", "fine"}
    assert listed["summary-linked"]["status"] == "finished"  # from its own log
    assert "leaked" not in body.decode() and "elsewhere" not in body.decode()
    assert listed["log-linked"]["status"] == "unreadable"
    assert "leads outside the run folder" in listed["log-linked"]["error"]
    assert listed["fine"]["status"] == "finished"
    assert page[0] == 404 and b"leads outside the run folder" in page[1]


def test_reports_named_outside_the_run_folder_are_shown_missing(outside):
    run = outside / "runs" / "a"
    (run / "media").mkdir(parents=True)
    (run / "media" / f"{MEDIA}.html").symlink_to(outside / "secret.txt")
    names = ["../../secret.txt", str(outside / "secret.txt"), f"media/{MEDIA}.html"]
    metrics = {f"r{i}": {"$media": name} for i, name in enumerate(names)}
    now = time.time()
    evaluation = EvalFinished(
        time=now, prefix="test", epoch=0, iters=4, metrics=metrics, duration=0.1, mode="inline"
    )
    _run_folder(run.parent / "b")  # keeps the helper's layout simple
    (run / "events.jsonl").write_bytes(
        _line(RunStarted(time=now, epochs=1, epoch=-1, iters=-1)) + _line(evaluation)
    )
    server = serve_folder(run, quiet=True)
    try:
        hello, history, status = asyncio.run(_first_frame(_ws(server)))
    finally:
        server.close()
    shown = json.dumps(history["latest"])
    assert "not yours" not in shown and shown.count("missing: ") == 3


def test_a_line_nested_100000_deep_skips_that_line_only(tmp_path, caplog):
    runs = tmp_path / "runs"
    bad = _run_folder(runs / "bad", extra=f'{{"type": "batch_ended", "x": {DEEP}}}\n'.encode())
    (bad / "summary.json").write_text('{"status": ' + DEEP + "}")
    _run_folder(runs / "good")
    with caplog.at_level(logging.WARNING, logger="evloop"):
        server = RunsServer([runs]).start(warm=False)
        try:
            status, body = _get(server.url + "api/runs")
            page_status, _ = _get(server.run_url("bad"))  # not a wait on a dead replay
            page = server.pages["bad"]
            hello, history, shown = asyncio.run(_first_frame(_ws(page)))
        finally:
            server.close()
    assert status == 200
    listed = {run["id"]: run for run in json.loads(body)["runs"]}
    assert listed["bad"]["status"] == listed["good"]["status"] == "finished"
    assert page_status == 200
    assert len(history["series"]["train/loss"]) == 5 and shown["state"] == "finished"
    assert any("nested too deeply" in r.getMessage() for r in caplog.records)
    assert all(r.exc_info is None for r in caplog.records)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_a_message_nested_as_deep_as_it_fits_closes_with_1007_and_one_log_line(fmt, caplog, capfd):
    recipe = Recipe(lambda b: {"loss": torch.tensor(1.0)}, range(5))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Log("loss", "loss")])
    server = recipe.serve(quiet=True, open_control=True)
    # a message is at most 64 KiB (a longer one closes with 1009): as deep as fits
    if fmt == "json":
        deep = "[" * 30_000 + "]" * 30_000
        message = '{"type": "command", "op": "set", "values": {"lr": ' + deep + "}}"
    else:
        message = msgspec.msgpack.encode({"type": "command", "op": "set", "values": {}})
        message = message[:-1] + b"\x81\xa2lr" + b"\x91" * 60_000 + b"\x90"

    async def send_it():
        async with connect(f"{server.ws_url}?format={fmt}", max_size=None) as ws:
            await ws.recv()  # hello, history, status
            await ws.send(message)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            return closed.value.rcvd

    try:
        with caplog.at_level(logging.WARNING):
            closed = asyncio.run(asyncio.wait_for(send_it(), 30))
            assert asyncio.run(_first_frame(server.ws_url))[0]["type"] == "hello"  # serving
    finally:
        server.close()
    assert closed.code == 1007 and "nested too deeply" in closed.reason
    lines = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "Traceback" not in capfd.readouterr().err


def test_a_killed_runs_own_page_says_stale_and_follows_its_log(tmp_path):
    run = _run_folder(tmp_path / "killed", start=time.time() - 1000, ended=False)
    server = serve_folder(run, quiet=True)

    async def watch():
        async with connect(_ws(server)) as ws:
            hello, history, status = json.loads(await ws.recv())
            first = status
            with open(run / "events.jsonl", "ab") as log:  # it was only paused
                log.write(_line(BatchEnded(epoch=0, iters=5, epoch_batch=6, metrics={"loss": 0.1})))
            while status["state"] == "stale":
                for message in json.loads(await ws.recv()):
                    status = message if message["type"] == "status" else status
            return first, status

    try:
        first, later = asyncio.run(asyncio.wait_for(watch(), 30))
    finally:
        server.close()
    assert first["state"] == "stale" and "no end recorded" in first["error"]
    assert later["state"] == "running" and later["error"] is None and later["iters"] == 5


def test_the_runs_list_and_the_page_agree_on_a_killed_run(tmp_path):
    run = _run_folder(tmp_path / "runs" / "killed", start=time.time() - 1000, ended=False)
    (run / "summary.json").write_text(json.dumps({"status": "running"}))  # as it was left
    old = time.time() - 900
    os.utime(run / "events.jsonl", (old, old))
    server = RunsServer([tmp_path / "runs"]).start(warm=False)
    try:
        listed = json.loads(_get(server.url + "api/runs")[1])["runs"][0]  # from its summary
        _get(server.run_url("killed"))
        shown = asyncio.run(_first_frame(_ws(server.pages["killed"])))[2]
    finally:
        server.close()
    assert listed["status"] == shown["state"] == "stale"
