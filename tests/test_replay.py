"""`evloop serve RUN_DIR`: a finished run's dashboard, from its folder, in a new process."""

import asyncio
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch
from websockets.asyncio.client import connect

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.reports import Report


class _Media:
    def on_batch_end(self, state):
        if state["iters"] % 10 == 0:
            state["metrics"]["report"] = Report(lambda: "<table><tr><td>kept</td></tr></table>")
            grid = torch.zeros(4, 1, 8, 8)
            grid[..., state["iters"] // 10] = 1.0
            state["metrics"]["grid"] = grid


def _finished_run(folder):
    recipe = Recipe(lambda b: {"loss": torch.tensor(float(b) / 10)}, range(30))
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Log("loss", "loss"), _Media(), ecb.JsonlWriter(folder / "events.jsonl")]
    )
    server = recipe.serve(quiet=True, every=1, token="t0k")
    try:
        recipe.run(2)
        return asyncio.run(_first_frames(server.ws_url + "?token=t0k"))
    finally:
        server.close()


async def _first_frames(url):
    async with connect(url) as ws:
        hello, history, status = json.loads(await ws.recv())
    return history, status


@pytest.fixture
def replayed(tmp_path):
    run = tmp_path / "runs" / "first"
    run.mkdir(parents=True)
    live = _finished_run(run)
    process = subprocess.Popen(
        [sys.executable, "-m", "evloop", "serve", str(tmp_path / "runs"), "--token", "t0k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        address = re.search(r"first at (http://\S+)", lines[1])
        assert address, f"no address in {lines}: {process.stderr.read() if process.poll() else ''}"
        with urllib.request.urlopen(address.group(1), timeout=30) as page:  # a redirect
            yield run, live, page.geturl()
    finally:
        process.terminate()
        process.wait(10)


def test_a_served_folder_shows_what_the_live_page_showed(replayed):
    run, (live_history, live_status), page = replayed
    ws = page.replace("http://", "ws://").replace("/?token=", "/ws?token=")
    history, status = asyncio.run(_first_frames(ws))
    assert history["series"] == live_history["series"]
    steps, values = zip(*history["series"]["train/loss"][:3], strict=True)
    assert steps == (0, 1, 2) and values == pytest.approx((0.0, 0.1, 0.2))
    assert status["state"] == live_status["state"] == "finished"
    assert status["iters"] == live_status["iters"] == 59
    # reports come back from their files; pictures as links to the media they are
    latest = history["latest"]
    assert "kept" in json.dumps(latest)
    image = re.search(r'src=\\?"/(media/[0-9a-f]+\.png)\?token=t0k', json.dumps(latest))
    assert image, latest
    with urllib.request.urlopen(page.split("?")[0] + image.group(1) + "?token=t0k") as got:
        assert got.read().startswith(b"\x89PNG")


def test_media_need_the_token_and_stay_inside_the_run_folder(replayed):
    run, _, page = replayed
    (run.parent / "secret.txt").write_text("not yours")
    root = page.split("?")[0]
    name = next((run / "media").iterdir()).name
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{root}media/{name}")
    assert refused.value.code == 401
    for escape in ("media/../../secret.txt", "media/%2e%2e/%2e%2e/secret.txt"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{root}{escape}?token=t0k")
        assert refused.value.code == 404


def test_a_path_without_runs_is_refused_plainly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "evloop", "serve", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no run folder (with an events.jsonl)" in done.stderr


def test_a_run_that_appears_while_serving_is_served_too(tmp_path):
    import queue
    import shutil
    import threading

    first = tmp_path / "runs" / "first"
    first.mkdir(parents=True)
    recipe = Recipe(lambda b: {"loss": torch.tensor(float(b))}, range(5))
    recipe.callbacks.add_callbacks(
        [ecb.Log("loss", "loss"), ecb.JsonlWriter(first / "events.jsonl")]
    )
    recipe.run(1)
    process = subprocess.Popen(
        [sys.executable, "-m", "evloop", "serve", str(tmp_path / "runs"), "--token", "t0k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True).start()

    def served(name):
        while True:
            line = lines.get(timeout=30)  # what serve printed, or Empty after 30 s
            if f"{name} at " in line:
                return re.search(r" at (http://\S+)", line).group(1)

    try:
        served("first")
        shutil.copytree(first, tmp_path / "runs" / "second")  # a run that ends meanwhile
        page = urllib.request.urlopen(served("second"), timeout=10).read().decode()
        assert "<title>evloop" in page
    finally:
        process.terminate()
        process.wait(10)
