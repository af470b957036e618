"""N websocket clients reading a served recipe until its run ends; prints latencies.

usage: ws_clients.py WS_URL N  → JSON {"latencies_ms": [...]} (client 0's, publish to
receive, for per-step events) once every client saw the run end.
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect


async def client(url, index, latencies, ready):
    async with connect(url + "?format=json", max_size=None, compression=None) as ws:
        ready.append(index)
        async for frame in ws:
            now = time.time()
            for message in json.loads(frame):
                if index == 0 and message["type"] == "batch_ended":
                    latencies.append((now - message["time"]) * 1e3)
                if message["type"] in ("run_finished", "run_failed"):
                    return


async def main(url, n):
    latencies, ready = [], []
    tasks = [asyncio.create_task(client(url, i, latencies, ready)) for i in range(n)]
    while len(ready) < n:
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps({"latencies_ms": latencies}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
