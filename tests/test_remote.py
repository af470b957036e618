"""The websocket server with real clients: security, robustness, history, attach."""

import asyncio
import gc
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import msgspec
import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import evloop.callbacks as ecb
import evloop.remote.client
from evloop import Recipe
from evloop.events import BatchEnded, EpochEnded, RunFinished
from evloop.loggers import StdoutLogger
from evloop.remote import NotAServer, attach, control, subscribe
from evloop.remote.client import RunEnded
from evloop.remote.protocol import Hello, Status


def _recipe(n=100, step_s=0.0):
    def forward(batch):
        if step_s:
            time.sleep(step_s)
        return {"loss": torch.tensor(float(batch))}

    recipe = Recipe(forward, range(n))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Log("loss", "loss")])
    return recipe


def _run_in_thread(recipe, epochs=1):
    thread = threading.Thread(target=recipe.run, args=(epochs,))
    thread.start()
    return thread


async def _frames(ws, count):
    return [json.loads(await ws.recv()) for _ in range(count)]


@pytest.fixture
def served():
    recipe = _recipe()
    server = recipe.serve(token="s3cret", quiet=True)
    yield recipe, server
    server.close()


def test_missing_or_wrong_token_is_refused(served):
    recipe, server = served

    async def main():
        for query in ("", "?token=nope"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.ws_url + query):
                    pass
            assert refused.value.response.status_code == 401
        async with connect(server.ws_url + "?token=s3cret") as ws:
            hello, *_ = json.loads(await ws.recv())
            assert hello["type"] == "hello" and hello["protocol"] == 1

    asyncio.run(main())


def test_a_browser_from_another_origin_is_refused(served):
    recipe, server = served

    async def main():
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url + "?token=s3cret", origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        same = f"http://127.0.0.1:{server.port}"
        async with connect(server.ws_url + "?token=s3cret", origin=same) as ws:
            assert json.loads(await ws.recv())[0]["type"] == "hello"

    asyncio.run(main())


def test_non_loopback_binding_requires_a_token():
    from evloop.remote import Server

    server = Server(_recipe().bus, host="0.0.0.0", quiet=True)
    assert server.token and len(server.token) >= 24
    assert Server(_recipe().bus, host="127.0.0.1").token is None


@pytest.mark.parametrize(
    "payload,code",
    [
        ("{not json", 1007),
        ('{"type": "launch_missiles"}', 1003),
        ('{"type": "subscribe", "every": "often"}', 1007),
        (b"\xc1\xff\x00", 1007),
    ],
)
def test_malformed_or_unknown_messages_close_with_a_reason_and_training_goes_on(payload, code):
    recipe = _recipe(300, step_s=0.002)
    server = recipe.serve(quiet=True)
    fmt = "msgpack" if isinstance(payload, bytes) else "json"

    async def main():
        async with connect(server.ws_url + f"?format={fmt}") as ws:
            await ws.recv()
            thread = _run_in_thread(recipe)
            await ws.send(payload)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd.code == code and closed.value.rcvd.reason
            await asyncio.to_thread(thread.join)

    try:
        asyncio.run(main())
    finally:
        server.close()
    assert recipe.progress.iters == 299


def test_an_oversized_frame_closes_that_client_only(served):
    recipe, server = served

    async def main():
        async with connect(server.ws_url + "?token=s3cret") as ws:
            await ws.recv()
            await ws.send("x" * (65 * 1024))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd.code == 1009
        async with connect(server.ws_url + "?token=s3cret") as ws:  # others still served
            assert json.loads(await ws.recv())[0]["type"] == "hello"

    asyncio.run(main())


def test_a_client_that_never_reads_is_bounded_then_disconnected():
    recipe = _recipe(20_000)
    big = "x" * 500_000  # 500 kB per event: socket buffers fill within a few steps
    recipe.callbacks.add_callback(
        type(
            "Big",
            (),
            {"on_batch_end": lambda self, state: state["metrics"].__setitem__("note", big)},
        )()
    )
    server = recipe.serve(quiet=True, send_timeout=1.0, max_backlog=50)

    async def main():
        # a raw client: completes the handshake, then never reads a byte
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert b" 101 " in sock.recv(200)
        thread = _run_in_thread(recipe, epochs=3)
        longest_outbox = 0
        deadline = time.monotonic() + 60
        while (thread.is_alive() or server.clients) and time.monotonic() < deadline:
            for client in list(server.clients):
                longest_outbox = max(longest_outbox, len(client.outbox))
            await asyncio.sleep(0.05)
        await asyncio.to_thread(thread.join)
        sock.close()
        return longest_outbox

    try:
        longest_outbox = asyncio.run(main())
    finally:
        server.close()
    assert recipe.progress.iters == 59_999  # training went on to the end
    assert longest_outbox <= 51  # per-step events coalesce; the backlog is bounded
    assert server.disconnected_slow == 1 and not server.clients


def test_a_hundred_connect_disconnect_cycles_leak_nothing():
    recipe = _recipe()
    server = recipe.serve(quiet=True, handshake_burst=200)  # one address, 105 handshakes

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    async def cycles(n):
        for _ in range(n):
            async with connect(server.ws_url) as ws:
                await ws.recv()

    try:
        asyncio.run(cycles(5))
        gc.collect()
        fds, tasks = open_fds(), _server_tasks(server)
        asyncio.run(cycles(100))
        time.sleep(0.3)
        gc.collect()
        assert open_fds() <= fds + 2
        assert _server_tasks(server) == tasks
        assert not server.clients
    finally:
        server.close()


def _server_tasks(server):
    future = asyncio.run_coroutine_threadsafe(_count_tasks(), server._loop)
    return future.result(5)


async def _count_tasks():
    return len(asyncio.all_tasks())


def test_a_late_joiner_gets_the_history_then_live_events():
    recipe = _recipe(50)
    server = recipe.serve(quiet=True, every=1)
    try:
        recipe.run(1)

        async def main():
            async with connect(server.ws_url) as ws:
                return json.loads(await ws.recv())

        hello, history, status = asyncio.run(main())
        assert history["type"] == "history"
        assert "train/loss" in history["series"], (history, status)
        assert history["series"]["train/loss"] == [[i, float(i)] for i in range(50)]
        assert status["state"] == "finished" and status["iters"] == 49
    finally:
        server.close()


def test_the_history_keeps_the_last_fifty_notices_and_no_other_event():
    from evloop.events import EvalSkipped
    from evloop.remote.history import RunHistory

    history = RunHistory()
    for i in range(60):
        history.update(EvalSkipped(prefix="test", iters=i, skipped=i + 1), None)
        history.update(BatchEnded(epoch=0, iters=i, epoch_batch=i, metrics={}), None)
    notices = history.snapshot().notices
    assert [n.iters for n in notices] == list(range(10, 60))
    assert all(isinstance(n, EvalSkipped) for n in notices)


def test_series_are_decimated_to_stay_bounded():
    from evloop.remote.history import Series

    series = Series(capacity=100)
    for i in range(10_000):
        series.add(i, float(i))
    assert 50 <= len(series.points) <= 100
    assert series.points[0] == (0, 0.0) and series.points[-1][0] >= 9_800


def test_subscribe_decodes_typed_events_over_msgpack():
    recipe = _recipe(30, step_s=0.002)
    server = recipe.serve(quiet=True)

    async def main():
        received = []
        async for event in subscribe(
            server.ws_url, types=[BatchEnded, RunFinished], every=10, until_run_end=True
        ):
            received.append(event)
        return received

    async def run_both():
        task = asyncio.create_task(main())
        await asyncio.sleep(0.3)
        thread = _run_in_thread(recipe)
        received = await task
        await asyncio.to_thread(thread.join)
        return received

    try:
        received = asyncio.run(run_both())
    finally:
        server.close()
    assert [type(e) for e in received[:-1]] == [BatchEnded] * 3
    assert [e.iters for e in received[:-1]] == [0, 10, 20]
    assert received[0].metrics == {"loss": 0.0}
    assert isinstance(received[-1], RunFinished)


def _both_welcomed(server):
    """Two clients that got their first frame (hello, history): every event from then
    on reaches them live; one dispatched before that is only in their history."""
    clients = list(server.clients)
    return len(clients) == 2 and all(client.joined for client in clients)


def test_attached_loggers_run_in_another_process_and_cannot_hurt_the_run(tmp_path):
    recipe = _recipe(200, step_s=0.005)
    server = recipe.serve(token="t0k", quiet=True, every=1)
    out = tmp_path / "remote.jsonl"
    cli = [sys.executable, "-m", "evloop.cli", "attach", server.ws_url, "--token", "t0k"]
    jsonl = subprocess.Popen([*cli, "--to", "jsonl", str(out)])
    stdout = subprocess.Popen(
        [*cli, "--to", "stdout", "--prefix", "remote"], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _both_welcomed(server):
            time.sleep(0.05)  # both processes attached and past their first frame
        assert _both_welcomed(server), "the attached loggers did not connect within 60 s"
        recipe.run(1)
        assert jsonl.wait(30) == 0
        printed, _ = stdout.communicate(timeout=30)
    finally:
        jsonl.kill()
        stdout.kill()
        server.close()
    events = [msgspec.json.decode(line) for line in out.read_bytes().splitlines()]
    assert [e["iters"] for e in events if e["type"] == "batch_ended"] == list(range(200))
    assert events[-1]["type"] == "run_finished"
    assert "remote | Ep. 1/1 It 191 | loss=190\n" in printed


def test_a_crashing_attached_logger_is_dropped_without_touching_the_run():
    from evloop import Subscriber

    class Crashes(Subscriber):
        def handle(self, event):
            raise RuntimeError("remote logger bug")

    class Counts(Subscriber):
        types = (EpochEnded,)

        def __init__(self):
            self.seen = 0

        def handle(self, event):
            self.seen += 1

    recipe = _recipe(100, step_s=0.002)
    server = recipe.serve(quiet=True)
    counts = Counts()

    async def main():
        task = asyncio.create_task(attach(server.ws_url, [Crashes(), counts]))
        await asyncio.sleep(0.3)
        thread = _run_in_thread(recipe, epochs=2)
        await task
        await asyncio.to_thread(thread.join)

    try:
        asyncio.run(main())
    finally:
        server.close()
    assert recipe.progress.iters == 199 and counts.seen == 2  # both epochs of the run


def test_a_client_joining_mid_run_gets_every_point_once():
    # Frames leave every 0.2 s, so events wait in the shared outbox when the client
    # joins: the history must hold exactly what was dispatched, the frames the rest.
    recipe = _recipe(400, step_s=0.002)
    server = recipe.serve(quiet=True, every=1, frame_interval=0.2)
    thread = _run_in_thread(recipe)

    async def main():
        while recipe.progress.iters < 100:
            await asyncio.sleep(0.01)
        seen = []
        async with connect(server.ws_url) as ws:
            while True:
                for message in json.loads(await ws.recv()):
                    if message["type"] == "history":
                        seen += [x for x, _ in message["series"].get("train/loss", [])]
                    elif message["type"] == "batch_ended":
                        seen.append(message["iters"])
                    elif message["type"] == "run_finished":
                        return seen

    try:
        seen = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        thread.join()
        server.close()
    assert seen == list(range(400))


async def _with_impostor(first_frame, client):
    """``client(url)`` against a websocket server that is not a recipe's: it sends
    ``first_frame`` (None: nothing) and then stays silent until the client leaves."""
    from websockets.asyncio.server import serve as ws_serve

    async def handler(ws):
        if first_frame is not None:
            await ws.send(first_frame)
        await ws.wait_closed()

    async with ws_serve(handler, "127.0.0.1", 0) as impostor:
        port = impostor.sockets[0].getsockname()[1]
        return await client(f"ws://127.0.0.1:{port}")


async def _first_event(url):
    async for event in subscribe(url):
        return event


async def _send_pause(url):
    async with control(url, "token") as run:
        return await run.pause()


@pytest.mark.parametrize("client", [_first_event, _send_pause])
def test_a_server_that_never_says_hello_is_a_timeout_not_a_hang(monkeypatch, client):
    monkeypatch.setattr(evloop.remote.client, "GREETING_TIMEOUT_S", 0.5)
    with pytest.raises(TimeoutError, match="sent no hello within 0.5 s"):
        asyncio.run(_with_impostor(None, client))


@pytest.mark.parametrize(
    "frame, says",
    [
        (b"\x93\x01\x02\x03", "not an evloop server: its first frame"),
        ('{"hello": "world"}', "not an evloop server"),
        (msgspec.msgpack.encode([Status(iters=0, epoch=0)]), "its first frame has no hello"),
        (
            msgspec.msgpack.encode([Hello(protocol=99, format="msgpack", name="x", every=1)]),
            "speaks evloop protocol 99, this client 1",
        ),
    ],
)
def test_a_server_speaking_something_else_is_named_as_such(frame, says):
    with pytest.raises(NotAServer, match=says):
        asyncio.run(_with_impostor(frame, _first_event))
    with pytest.raises(NotAServer, match=says):
        asyncio.run(_with_impostor(frame, _send_pause))


def test_attach_to_something_else_fails_at_once_and_to_a_silent_server_gives_up(monkeypatch):
    monkeypatch.setattr(evloop.remote.client, "GREETING_TIMEOUT_S", 0.3)
    printer = StdoutLogger(stream=io.StringIO())
    with pytest.raises(RunEnded, match="not an evloop server"):
        asyncio.run(_with_impostor("nonsense", lambda url: attach(url, [printer])))
    with pytest.raises(RunEnded, match="sent no hello within 0.3 s.*gave up after 1 s"):
        asyncio.run(_with_impostor(None, lambda url: attach(url, [printer], retry_for=1)))


def test_the_ctl_command_names_a_server_that_is_not_one():
    async def ctl(url):
        command = [sys.executable, "-m", "evloop.cli", "ctl", url, "pause", "--token", "t"]
        return await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60
        )

    done = asyncio.run(_with_impostor("<html>", ctl))
    assert done.returncode == 1
    assert "is not an evloop server: its first frame is text '<html>'" in done.stderr
