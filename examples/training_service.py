"""A training service: an asyncio app that starts, watches and stops runs on request.

    python examples/training_service.py [--host 127.0.0.1] [--port 8765] [--token T]

HTTP (GET; websockets' server answers plain GET requests):

``/runs``
    every run: id, status (running, finished, stopped, failed), epoch, iteration,
    latest metrics (the running ones and the last 100 that ended)
``/runs/<id>``
    one run

Websockets:

``/control``
    JSON commands, one reply each: ``{"op": "start", "epochs": 3, "lr": 0.01}`` →
    ``{"ok": true, "run": "run-1"}``; ``{"op": "stop", "run": "run-1"}``;
    ``{"op": "list"}``. A bad command gets ``{"ok": false, "error": "..."}``.
``/runs/<id>/events``
    the run's events from now on (JSON text frames, :mod:`evloop.events`), until
    it ends

Each run trains a small CNN on scikit-learn's 8x8 digits with ``await recipe.arun()``:
its batch loop runs in a worker thread, so the loop that answers requests never waits
for a step. The server binds to loopback; any other address requires a token (given
or generated and printed), as ``?token=`` or ``Authorization: Bearer``.

Under trio, ``Recipe.arun`` and ``bus.stream()`` work as they do here, but websockets'
server is asyncio-only: serve with a trio-native server instead (the same handlers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import urllib.parse
from typing import Any

import torch
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

import evloop.callbacks as ecb
from evloop import Recipe
from evloop.codec import encode_json, to_builtin
from evloop.demo import digits_loaders, small_cnn
from evloop.events import BatchEnded, EpochEnded, RunFailed, RunFinished
from evloop.remote.auth import token_for, token_ok
from evloop.remote.server import http_response

MAX_EPOCHS = 1000
KEEP_ENDED = 100  # ended runs remembered for /runs; older ones are forgotten
MAX_COMMAND = 4096  # bytes


class BadCommand(ValueError):
    """A command the service refuses; its message goes back to the client."""


@dataclasses.dataclass
class Run:
    id: str
    recipe: Recipe
    epochs: int
    lr: float
    status: str = "running"
    error: str | None = None
    epoch: int = -1
    iters: int = -1
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    task: asyncio.Task | None = None

    def summary(self) -> dict[str, Any]:
        fields = ("id", "status", "error", "epochs", "lr", "epoch", "iters", "metrics")
        return {name: getattr(self, name) for name in fields}

    def track(self, event: Any) -> None:
        """Keeps the latest position and metrics (a ``latest`` subscriber)."""
        if isinstance(event, BatchEnded | EpochEnded):
            self.epoch, self.iters = event.epoch, event.iters
            self.metrics = {k: to_builtin(v) for k, v in event.metrics.items()}
        elif isinstance(event, RunFinished):
            self.status = "stopped" if event.stopped else "finished"
        elif isinstance(event, RunFailed):
            self.status, self.error = "failed", event.error


def digits_recipe(lr: float) -> Recipe:
    train, _, _ = digits_loaders()

    def forward_pass(batch, model):
        x, y = batch
        pred = model(x)
        loss = torch.nn.functional.cross_entropy(pred, y)
        loss.backward()
        return {"loss": loss, "pred": pred}

    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    recipe = Recipe(forward_pass, train)
    recipe.register("model", model)
    recipe.register("opt", opt)
    recipe.callbacks.add_callbacks(
        [ecb.Counter(), ecb.Optimizer(opt), ecb.EpochMetricAvg("loss"), ecb.AccAvg()]
    )
    return recipe


def parse_start(command: dict[str, Any]) -> tuple[int, float]:
    epochs, lr = command.get("epochs", 1), command.get("lr", 0.05)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        raise BadCommand(f"epochs must be an integer from 1 to {MAX_EPOCHS}, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr <= 10:
        raise BadCommand(f"lr must be a number in (0, 10], got {lr!r}")
    return epochs, float(lr)


class TrainingService:
    """``async with TrainingService(port=0) as service:`` serves until the block ends,
    then stops every run (each ends cleanly at a batch boundary)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8765, token: str | None = None, max_runs=2
    ):
        self.host, self.port = host, port
        self.token = token_for(host, token)
        self.max_runs = max_runs
        self.runs: dict[str, Run] = {}
        self._starting = 0
        self._started = 0
        self._server: Any = None

    # -- runs -------------------------------------------------------------------------
    async def start_run(self, epochs: int, lr: float) -> Run:
        running = sum(run.status == "running" for run in self.runs.values()) + self._starting
        if running >= self.max_runs:
            raise BadCommand(f"{self.max_runs} runs are running already: stop one first")
        self._starting += 1
        try:
            # Loading data and building the model take a while: not on the loop.
            recipe = await asyncio.to_thread(digits_recipe, lr)
        finally:
            self._starting -= 1
        self._started += 1
        run = Run(f"run-{self._started}", recipe, epochs, lr)
        run.recipe.bus.subscribe(run.track, policy="latest", name="service")
        run.task = asyncio.create_task(self._train(run))
        self.runs[run.id] = run
        self._forget_old_runs()
        return run

    def _forget_old_runs(self) -> None:
        ended = [run_id for run_id, run in self.runs.items() if run.status != "running"]
        for run_id in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self.runs[run_id]

    async def _train(self, run: Run) -> None:
        with contextlib.suppress(Exception):  # RunFailed already told the tracker
            await run.recipe.arun(run.epochs)

    def find(self, run_id: Any) -> Run:
        if run_id not in self.runs:
            raise BadCommand(f"no run {run_id!r}; runs: {sorted(self.runs)}")
        return self.runs[run_id]

    async def command(self, text: str | bytes) -> dict[str, Any]:
        try:
            command = json.loads(text)
        except ValueError as error:
            raise BadCommand(f"a command is a JSON object: {error}") from None
        if not isinstance(command, dict):
            raise BadCommand("a command is a JSON object with an 'op'")
        op = command.get("op")
        if op == "start":
            run = await self.start_run(*parse_start(command))
            return {"ok": True, "run": run.id}
        if op == "stop":
            self.find(command.get("run")).recipe.stop()
            return {"ok": True}
        if op == "list":
            return {"ok": True, "runs": [run.summary() for run in self.runs.values()]}
        raise BadCommand(f"unknown op {op!r}: use start, stop or list")

    # -- serving ----------------------------------------------------------------------
    async def __aenter__(self) -> TrainingService:
        self._server = await serve(
            self._websocket, self.host, self.port, process_request=self._http, max_size=MAX_COMMAND
        ).__aenter__()
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for run in self.runs.values():
            run.recipe.stop()
        await asyncio.gather(*(run.task for run in self.runs.values() if run.task))
        await self._server.__aexit__(*exc)

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if not token_ok(self.token, request):
            return connection.respond(401, "missing or wrong token\n")
        path = urllib.parse.urlsplit(request.path).path.rstrip("/")
        parts = path.split("/")[1:]
        if path == "/control" or (len(parts) == 3 and parts[0] == "runs" and parts[2] == "events"):
            return None  # a websocket
        if path == "/runs":
            return _json([run.summary() for run in self.runs.values()])
        if len(parts) == 2 and parts[0] == "runs" and parts[1] in self.runs:
            return _json(self.runs[parts[1]].summary())
        return connection.respond(404, "not found\n")

    async def _websocket(self, ws: ServerConnection) -> None:
        path = urllib.parse.urlsplit(ws.request.path).path.rstrip("/")
        with contextlib.suppress(ConnectionClosed):
            if path == "/control":
                await self._control(ws)
            else:
                await self._watch(ws, path.split("/")[2])

    async def _control(self, ws: ServerConnection) -> None:
        async for text in ws:
            try:
                reply = await self.command(text)
            except BadCommand as error:
                reply = {"ok": False, "error": str(error)}
            await ws.send(json.dumps(reply))

    async def _watch(self, ws: ServerConnection, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None:
            await ws.close(1008, f"no run {run_id!r}")
            return
        if run.status != "running":
            await ws.send(json.dumps({"type": "status", **run.summary()}))
            return
        async for event in run.recipe.bus.stream():
            await ws.send(encode_json(event).decode())


def _json(value: Any) -> Response:
    return http_response(200, json.dumps(value).encode() + b"\n", "application/json")


async def main() -> None:
    parser = argparse.ArgumentParser(description="start, watch and stop training runs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token")
    args = parser.parse_args()
    async with TrainingService(args.host, args.port, args.token) as service:
        query = f"?token={service.token}" if service.token else ""
        print(f"training service on http://{args.host}:{service.port}/runs{query}", flush=True)
        await asyncio.Event().wait()  # until Ctrl-C


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
