"""Websocket clients of a served recipe, in their own process (as browsers would be).

usage: ws_clients.py WS_URL N [read|flood|idle]
  read  (default): N clients read until the run ends; prints {"latencies_ms": [...]}
        (client 0's, publish to receive, for per-step events)
  flood: N clients send subscribe messages as fast as they can until closed; prints
        {"closed": [close codes]}
  idle: N clients complete the handshake and never read; prints {} at the run's end
        (read from stdin: the parent writes a line when the run is over)
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def reader(url, index, latencies, ready):
    async with connect(url + "?format=json", max_size=None, compression=None) as ws:
        ready.append(index)
        async for frame in ws:
            now = time.time()
            for message in json.loads(frame):
                if index == 0 and message["type"] == "batch_ended":
                    latencies.append((now - message["time"]) * 1e3)
                if message["type"] in ("run_finished", "run_failed"):
                    return


async def flooder(url, index, closed, ready):
    message = json.dumps({"type": "subscribe", "every": 10})
    async with connect(url + "?format=json", max_size=None) as ws:
        ready.append(index)
        try:
            while True:
                await ws.send(message)
        except ConnectionClosed as error:
            closed.append(error.rcvd.code if error.rcvd else None)


async def idler(url, index, ready):
    # a real handshake, then never read: the server must cope
    async with connect(url + "?format=json", max_size=None, max_queue=1) as ws:
        ready.append(index)
        ws.transport.pause_reading()
        await asyncio.Event().wait()  # until cancelled


async def main(url, n, mode):
    ready, results = [], []
    if mode == "read":
        tasks = [asyncio.create_task(reader(url, i, results, ready)) for i in range(n)]
    elif mode == "flood":
        tasks = [asyncio.create_task(flooder(url, i, results, ready)) for i in range(n)]
    else:
        tasks = [asyncio.create_task(idler(url, i, ready)) for i in range(n)]
    while len(ready) < n:
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    if mode == "idle":
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for task in tasks:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    key = {"read": "latencies_ms", "flood": "closed"}.get(mode)
    print(json.dumps({key: results} if key else {}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "read"))
