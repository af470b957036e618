"""The example training service: real HTTP requests and websocket clients start,
watch and stop runs while the service's event loop keeps answering."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from evloop.lag import LagProbe

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
from training_service import TrainingService  # noqa: E402

pytestmark = pytest.mark.slow


def http_get(url: str, token: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def ask(control, command: dict) -> dict:
    await control.send(json.dumps(command))
    return json.loads(await control.recv())


async def next_of(watch, kind: str) -> dict:
    while True:
        event = json.loads(await watch.recv())
        if event["type"] == kind:
            return event


def test_the_service_starts_watches_and_stops_a_run():
    async def scenario():
        async with TrainingService(port=0) as service:
            base = f"127.0.0.1:{service.port}"
            async with connect(f"ws://{base}/control") as control:
                started = await ask(control, {"op": "start", "epochs": 100, "lr": 0.05})
                assert started["ok"], started
                run_id = started["run"]
                async with connect(f"ws://{base}/runs/{run_id}/events") as watch:
                    first = await next_of(watch, "batch_ended")
                    assert "loss" in first["metrics"]
                    # lag while the CNN trains (not while a worker imports the data set)
                    async with LagProbe() as probe:
                        await next_of(watch, "epoch_ended")
                        status, runs = await asyncio.to_thread(http_get, f"http://{base}/runs")
                    assert status == 200
                    assert runs[0]["id"] == run_id and runs[0]["status"] == "running"
                    assert await ask(control, {"op": "stop", "run": run_id}) == {"ok": True}
                    finished = await next_of(watch, "run_finished")
                    assert finished["stopped"] is True
                await service.runs[run_id].task
                status, run = await asyncio.to_thread(http_get, f"http://{base}/runs/{run_id}")
                assert run["status"] == "stopped"
                assert 0 <= run["epoch"] < 100 and 0 < run["metrics"]["acc"] <= 1
                # bad commands get specific errors and change nothing
                for command, error in [
                    ({"op": "start", "epochs": "many"}, "epochs must be an integer"),
                    ({"op": "start", "lr": -1}, "lr must be a number"),
                    ({"op": "stop", "run": "run-9"}, "no run 'run-9'"),
                    ({"op": "fly"}, "unknown op 'fly'"),
                ]:
                    reply = await ask(control, command)
                    assert reply["ok"] is False and error in reply["error"], reply
                await control.send("{not json")
                assert "a command is a JSON object" in json.loads(await control.recv())["error"]
                assert len(service.runs) == 1
        return probe

    probe = asyncio.run(scenario())
    # the loop answered requests while a CNN trained: it was never blocked for a step
    assert probe.percentile(50) < 5
    assert max(probe.lateness_ms) < 250


def test_a_service_bound_elsewhere_requires_its_token():
    async def scenario():
        async with TrainingService(host="0.0.0.0", port=0) as service:
            assert service.token
            base = f"127.0.0.1:{service.port}"
            status, _ = await asyncio.to_thread(http_get, f"http://{base}/runs")
            assert status == 401
            status, runs = await asyncio.to_thread(http_get, f"http://{base}/runs", service.token)
            assert (status, runs) == (200, [])
            with pytest.raises(InvalidStatus, match="401"):
                async with connect(f"ws://{base}/control"):
                    pass
            async with connect(f"ws://{base}/control?token={service.token}") as control:
                assert await ask(control, {"op": "list"}) == {"ok": True, "runs": []}

    asyncio.run(scenario())


def test_the_service_script_serves_until_interrupted():
    process = subprocess.Popen(
        [sys.executable, "training_service.py", "--port", "0"],
        cwd=EXAMPLES,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        found = re.search(r"http://127.0.0.1:(\d+)/runs", line)
        assert found, line + process.stderr.read()
        status, runs = http_get(f"http://127.0.0.1:{found.group(1)}/runs")
        assert (status, runs) == (200, [])
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors
