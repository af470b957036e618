"""What one address may cost a served recipe: handshakes and messages per second
across all its connections, refusals that say why, then drops that cost nothing.
Real servers, real sockets, a real training run (its speed is a benchmark's:
benchmarks/attacks.py)."""

import asyncio
import json
import threading
import time

import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.events import CommandApplied
from evloop.remote import budgets
from evloop.remote.budgets import HANDSHAKE_BURST, MESSAGE_BURST

CONTROL = "c0ntrol"


@pytest.fixture
def training():
    """A recipe training (with a setting to steer) while a test attacks its server."""
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def forward(batch):
        time.sleep(0.001)
        model(torch.ones(1, 4)).sum().backward()
        return {"loss": torch.tensor(1.0)}

    recipe = Recipe(forward, range(10**7))
    recipe.callbacks.add_callbacks([ecb.Counter(), ecb.Optimizer(opt), ecb.Log("loss", "loss")])
    applied = []
    recipe.bus.subscribe(applied.append, types=[CommandApplied])
    thread = threading.Thread(target=recipe.run, args=(1,))
    servers = []

    def serve(**options):
        server = recipe.serve(quiet=True, control_token=CONTROL, **options)
        servers.append(server)
        if not thread.is_alive():
            thread.start()
            while recipe.progress.iters < 5:
                time.sleep(0.01)
        return server

    yield recipe, serve, applied
    recipe.stop()
    thread.join(60)
    for server in servers:
        server.close()


async def _opened(url):
    ws = await connect(url, max_size=None)
    await ws.recv()  # hello, history, status
    return ws


def test_messages_are_counted_across_an_addresses_connections(training):
    recipe, serve, applied = training
    server = serve()
    url = f"{server.ws_url}?token={CONTROL}"
    command = json.dumps({"type": "command", "op": "set", "values": {"lr": 0.05}})

    async def five_connections():
        sockets = [await _opened(url) for _ in range(5)]
        for ws in sockets:  # 5 × 6 messages: within each one's share, not the address's
            for _ in range(6):
                await ws.send(command)
        closed = []
        for ws in sockets:
            try:
                async with asyncio.timeout(2):  # frames keep coming; a close may too
                    while True:
                        await ws.recv()
            except ConnectionClosed as error:
                closed.append((error.rcvd.code, error.rcvd.reason))
            except TimeoutError:
                await ws.close()
        return closed

    closed = asyncio.run(asyncio.wait_for(five_connections(), 60))
    assert closed and all(code == 1008 for code, _ in closed)
    assert closed[0][1] == "too many messages from this address (20 at once, then 10 a second)"
    deadline = time.monotonic() + 10
    while len(applied) < MESSAGE_BURST and time.monotonic() < deadline:
        time.sleep(0.05)
    assert MESSAGE_BURST <= len(applied) < 30  # 20 at once, a few more as it refilled


def test_handshakes_over_budget_are_refused_with_the_reason_then_dropped(training, monkeypatch):
    recipe, serve, applied = training
    # refusals hardly refill during the test, however slowly this machine knocks
    monkeypatch.setattr(budgets, "REFUSALS", (10, 0.01))
    server = serve(handshake_burst=5, handshakes_per_s=0.1)

    async def knock(times):
        seen = []
        for _ in range(times):
            try:
                ws = await connect(server.ws_url, open_timeout=10)
                seen.append(101)
                await ws.close()
            except InvalidStatus as refused:
                body = refused.response.body.decode()
                seen.append((refused.response.status_code, body.strip()))
            except (OSError, InvalidMessage):  # reset as it was accepted
                seen.append("dropped")
        return seen

    seen = asyncio.run(asyncio.wait_for(knock(40), 60))
    assert seen[:5] == [101] * 5
    refusal = (
        429,
        "too many connections from 127.0.0.1: at most 5 at once, then 0.1 a second; retry later",
    )
    assert seen[5:15] == [refusal] * 10  # answered 10 times, then not
    assert seen[15:] == ["dropped"] * 25
    assert server.accepts.dropped >= 25
    # a patient client gets in again
    deadline, knocked = time.monotonic() + 30, []
    while time.monotonic() < deadline and knocked != [101]:
        time.sleep(0.5)  # the client's own pace, not a synchronisation
        knocked = asyncio.run(knock(1))
    assert knocked == [101]
    assert recipe.progress.iters > 5  # training went on


def test_a_command_burst_and_a_reconnect_flood_get_no_more_than_the_budgets(training):
    recipe, serve, applied = training
    server = serve()
    url = f"{server.ws_url}?token={CONTROL}"
    command = json.dumps({"type": "command", "op": "set", "values": {"lr": 0.05}})
    outcomes = {"opened": 0, "refused": 0, "dropped": 0}

    async def commander():
        try:
            ws = await asyncio.wait_for(_opened(url), 20)
        except InvalidStatus:
            outcomes["refused"] += 1
            return
        except (OSError, InvalidMessage, TimeoutError):
            outcomes["dropped"] += 1
            return
        outcomes["opened"] += 1
        try:
            for _ in range(20):
                await ws.send(command)
            await asyncio.wait_for(ws.wait_closed(), 2)
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            ws.transport.abort()

    async def attack(seconds):
        started = time.monotonic()
        await asyncio.gather(*(commander() for _ in range(500)))  # the burst
        while time.monotonic() - started < seconds:  # then reconnecting at once
            await asyncio.gather(*(commander() for _ in range(8)))
        return time.monotonic() - started

    iters = recipe.progress.iters
    elapsed = asyncio.run(asyncio.wait_for(attack(3.0), 120))
    allowed = HANDSHAKE_BURST + 5 * elapsed  # the handshake budget: 20 at once, then 5 a second
    assert HANDSHAKE_BURST <= outcomes["opened"] <= allowed + 5, (outcomes, elapsed)
    assert outcomes["dropped"] > outcomes["refused"] > 0
    assert len(applied) <= MESSAGE_BURST + 10 * elapsed + 5  # the command budget
    assert server.accepts.dropped > outcomes["refused"]  # dropped as they were accepted
    assert recipe.progress.iters > iters  # training went on
