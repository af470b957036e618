"""Hostile websocket clients of a served recipe, in their own process, by phases.

usage: ws_attack.py WS_URL CONTROL_TOKEN PHASE_S ROUNDS

Each round: quiet, a command burst, quiet, a reconnect flood; then one more quiet
phase. One JSON line per phase on stdout, ``{"phase", "start", "end", ...counts}``
(``time.monotonic()``: the training process's clock too), then ``done``.

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
    if name == "burst":
        tasks = [_commander(url, until, counts) for _ in range(BURST_CONNECTIONS)]
    elif name == "flood":
        tasks = [_flooder(url, until, counts) for _ in range(FLOODERS)]
    else:
        tasks = [asyncio.sleep(seconds)]
    await asyncio.gather(*tasks)
    end = time.monotonic()
    print(json.dumps({"phase": name, "start": start, "end": end, **counts}), flush=True)


async def main(url, token, seconds, rounds):
    url = f"{url}?format=json&token={token}"
    for _ in range(rounds):
        for name in ("quiet", "burst", "quiet", "flood"):
            await _phase(name, url, seconds)
    await _phase("quiet", url, seconds)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
