"""Hostile websocket clients of a served recipe, in their own process, by phases.

usage: ws_attack.py WS_URL CONTROL_TOKEN PHASE_S ROUNDS

Each round: quiet, a command burst, the same burst on a decoy, quiet, a reconnect
flood, the same flood on a decoy; then one more quiet phase. The decoy is a websocket
server in this process that refuses every handshake (429): the attack costs the
machine as much, and the served recipe nothing. One JSON line per phase on stdout,
``{"phase", "start", "end", ...counts}`` (``time.monotonic()``: the training
process's clock too), then ``done``.

* burst: 500 connections at once with the control token, each sending 20 ``set``
  commands (values the run accepts) as fast as it can, then reading its answers for
  up to a second; reopened as soon as it is closed or refused, until the phase ends.
* flood: 8 clients reconnecting as fast as they can, each connection sending 30
  ``subscribe`` messages at once (more than an address's budget) and then cut off.
"""

import asyncio
import json
import sys
import time
from collections import Counter

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

BURST_CONNECTIONS = 500
BURST_COMMANDS = 20
FLOODERS = 8
FLOOD_MESSAGES = 30


async def _opened(url, counts):
    """A connection past its first frame, or None (refused, reset, too slow)."""
    try:
        ws = await asyncio.wait_for(connect(url, max_size=None, open_timeout=5), 5)
    except InvalidStatus as refused:
        counts[f"refused {refused.response.status_code}"] += 1
        return None
    except (OSError, TimeoutError, ConnectionClosed) as error:
        counts[f"failed {type(error).__name__}"] += 1
        return None
    except Exception as error:  # a handshake cut short
        counts[f"failed {type(error).__name__}"] += 1
        return None
    counts["opened"] += 1
    return ws


async def _commander(url, until, counts):
    command = json.dumps({"type": "command", "op": "set", "values": {"lr": 0.01}})
    while time.monotonic() < until:
        ws = await _opened(url, counts)
        if ws is None:
            await asyncio.sleep(0)
            continue
        try:
            for _ in range(BURST_COMMANDS):
                await ws.send(command)
                counts["commands sent"] += 1
            reading_until = min(until, time.monotonic() + 1.0)
            while time.monotonic() < reading_until:
                frame = await asyncio.wait_for(ws.recv(), reading_until - time.monotonic())
                counts["results ok"] += frame.count('"command_result","id":"","ok":true')
        except (ConnectionClosed, TimeoutError) as error:
            code = getattr(getattr(error, "rcvd", None), "code", None)
            counts[f"closed {code}"] += code is not None
        finally:
            await ws.close()


async def _flooder(url, until, counts):
    message = json.dumps({"type": "subscribe", "every": 10})
    while time.monotonic() < until:
        ws = await _opened(url, counts)
        if ws is None:
            continue
        try:
            for _ in range(FLOOD_MESSAGES):
                await ws.send(message)
                counts["messages sent"] += 1
        except ConnectionClosed as error:
            counts[f"closed {error.rcvd.code if error.rcvd else None}"] += 1
        finally:
            ws.transport.abort()  # and again at once


async def _phase(name, url, seconds):
    counts: Counter = Counter()
    start = time.monotonic()
    until = start + seconds
    kind = name.removeprefix("decoy ")
    if kind == "burst":
        tasks = [_commander(url, until, counts) for _ in range(BURST_CONNECTIONS)]
    elif kind == "flood":
        tasks = [_flooder(url, until, counts) for _ in range(FLOODERS)]
    else:
        tasks = [asyncio.sleep(seconds)]
    await asyncio.gather(*tasks)
    end = time.monotonic()
    print(json.dumps({"phase": name, "start": start, "end": end, **counts}), flush=True)


def _refuse_all(connection, request):
    return connection.respond(429, "a decoy\n")


async def _never(ws):
    await ws.close()


async def main(url, token, seconds, rounds):
    url = f"{url}?format=json&token={token}"
    async with serve(_never, "127.0.0.1", 0, process_request=_refuse_all) as decoy:
        port = next(iter(decoy.sockets)).getsockname()[1]
        decoy_url = f"ws://127.0.0.1:{port}/ws"
        for _ in range(rounds):
            for kind in ("burst", "flood"):
                await _phase("quiet", url, seconds)
                await _phase(kind, url, seconds)
                await _phase(f"decoy {kind}", decoy_url, seconds)
        await _phase("quiet", url, seconds)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
