"""Many runs on one page: the run folders found under some paths, their summaries, and
their series overlaid on a shared x grid (``evloop serve``).

HTTP only, on one port: ``/`` the comparison page, ``/api/runs`` the list,
``/api/series`` one metric of several runs bucketed (:mod:`evloop.remote.buckets`),
``/run/<id>/`` a run's own dashboard (its replay server, started on first visit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as serve_websockets
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .auth import NO_HOST, HostCheck, bind_address, token_for, token_ok
from .buckets import AXES, STATS, overlay, series_of
from .connections import check_port
from .follow import FollowedRun, is_server_address
from .http import dashboard_dir, dashboard_file, http_response, static_file
from .runlog import RunLog, run_folders
from .server import Server

__all__ = ["RunIndex", "RunsServer"]

MAX_POINTS = 10_000  # buckets a page may ask for
RESCAN_S = 2.0  # how often the paths are scanned for new run folders
STARTUP_S = 30.0
CLOSE_S = 15.0
log = logging.getLogger("evloop")


class RunIndex:
    """The runs under ``paths`` by id (the folder's name, made unique), rescanned with
    :meth:`scan`. Thread-safe: one lock around every read of the logs."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths = [Path(p) for p in paths if not is_server_address(str(p))]
        self.addresses = [str(p) for p in paths if is_server_address(str(p))]
        self.runs: dict[str, RunLog | FollowedRun] = {}
        self._folders: set[Path] = set()
        self.lock = threading.Lock()

    def scan(self) -> list[str]:
        """Take in run folders that appeared; their ids."""
        new = []
        found = run_folders(self.paths)  # the disk is read outside the lock
        with self.lock:
            for folder in found:
                where = folder.resolve()
                if where in self._folders:
                    continue
                self._folders.add(where)
                run_id = _unique(folder.name, self.runs)
                self.runs[run_id] = RunLog(folder)
                new.append(run_id)
        return new

    def follow(self, url: str) -> str:
        """Follow a run served by its own process (``url`` as its ``serve()`` printed
        it); its id."""
        run = FollowedRun(url, self.lock)
        with self.lock:
            run_id = _unique(run.name, self.runs)
            self.runs[run_id] = run
        run.start()
        return run_id

    def close(self) -> None:
        for run in self.runs.values():
            if isinstance(run, FollowedRun):
                run.close()

    def read_all(self) -> None:
        """Read every run's log (a warm-up: the first overlay of many runs is then as
        fast as the next), one run at a time so that requests go in between."""
        for run_id in list(self.runs):
            with self.lock:
                self.runs[run_id].refresh()

    def listing(self) -> list[dict[str, Any]]:
        """Every run's summary; a run that cannot be summed up is listed "unreadable",
        with why, and the others are listed all the same."""
        with self.lock:
            return [{**_summary(run), "id": run_id} for run_id, run in self.runs.items()]

    def series(
        self,
        ids: list[str],
        metric: str,
        axis: str = "step",
        points: int = 1000,
        x0: float | None = None,
        x1: float | None = None,
        stats: tuple[str, ...] = STATS,
    ) -> dict[str, Any]:
        """``metric`` of the runs ``ids`` on ``axis`` (see :func:`overlay`)."""
        with self.lock:
            shown = {}
            for run_id in ids:
                run = self.runs[run_id]
                run.refresh()  # a log that cannot be read: what was read of it
                column = run.columns.get(metric)
                if column is not None:
                    shown[run_id] = series_of(column, axis, run.batches_per_epoch)
        return {"metric": metric, "axis": axis, **overlay(shown, points, x0, x1, stats)}

    def metrics(self, ids: list[str]) -> list[str]:
        """Every series name of the runs ``ids`` (their logs are read)."""
        with self.lock:
            names: set[str] = set()
            for run_id in ids:
                self.runs[run_id].refresh()
                names.update(self.runs[run_id].columns)
        return sorted(names)


def _summary(run: RunLog | FollowedRun) -> dict[str, Any]:
    try:
        return run.summary()
    except Exception as error:  # a bug met by a hostile folder: that run only
        log.warning("%s cannot be listed: %r", run.name, error)
        said = f"cannot be read: {type(error).__name__}: {error}"
        return {"name": run.name, "status": "unreadable", "error": said, "series": None}


def _unique(name: str, taken: dict[str, Any]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}~{n}"
    return candidate


class RunsServer:
    """``RunsServer(paths, host='127.0.0.1', port=0, token=None).start()``: the
    comparison page of the runs under ``paths``. Loopback is open; any other address
    requires a token (one is made when none is given)."""

    def __init__(
        self,
        paths: Iterable[str | Path],
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.index = RunIndex(paths)
        check_port(port)
        self.host, self.port = bind_address(host), port
        self.token = token_for(self.host, token)
        self.hosts = HostCheck(self.host, allowed_hosts)
        self.pages: dict[str, Server] = {}
        self._pages_lock = threading.Lock()  # two first visits start one page
        self.warmed = threading.Event()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        query = f"?token={urllib.parse.quote(self.token)}" if self.token else ""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/{query}"

    def run_url(self, run_id: str) -> str:
        base, _, query = self.url.partition("?")
        return f"{base}run/{urllib.parse.quote(run_id)}/" + (f"?{query}" if query else "")

    def start(self, warm: bool = True) -> RunsServer:
        """Listen (the URL is then :attr:`url`); with ``warm``, read every run's log in
        a thread of its own meanwhile (:attr:`warmed` is set when done). Server
        addresses among the paths are followed."""
        self.index.scan()
        for address in self.index.addresses:
            self.index.follow(address)
        if warm:
            threading.Thread(target=self._warm, name="evloop-runs-index", daemon=True).start()
        else:
            self.warmed.set()
        self._thread = threading.Thread(target=self._main, name="evloop-runs", daemon=True)
        self._thread.start()
        if not self._ready.wait(STARTUP_S):
            raise TimeoutError(f"the runs server did not start listening within {STARTUP_S} s")
        if self._error is not None:
            raise self._error
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                self._loop.call_soon_threadsafe(self._stop.set_result, None)
        if self._thread is not None:
            self._thread.join(CLOSE_S)
            if self._thread.is_alive():
                log.warning("the runs server's thread did not stop within %.0f s", CLOSE_S)
        for page in list(self.pages.values()):
            page.close()
        self.index.close()

    def __enter__(self) -> RunsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _warm(self) -> None:
        try:
            self.index.read_all()
        finally:
            self.warmed.set()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start()
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve_websockets(
            _no_websocket, self.host, self.port, process_request=self._http
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            rescan = asyncio.create_task(self._rescan())
            await self._stop
            rescan.cancel()

    async def _rescan(self) -> None:
        """New run folders appear while it serves."""
        while True:
            await asyncio.sleep(RESCAN_S)
            await asyncio.to_thread(self.index.scan)

    # -- HTTP -------------------------------------------------------------------------
    async def _http(self, connection: ServerConnection, request: Request) -> Response:
        try:
            return await self._route(connection, request)
        except KeyError as error:
            return connection.respond(404, f"no run {error}\n")
        except ValueError as error:  # a malformed query: said plainly, never a 500
            return connection.respond(400, f"bad request: {error}\n")
        except Exception as error:  # one line in the log, no traceback, the server goes on
            log.warning("%s failed: %r", request.path[:200], error)
            return connection.respond(500, f"failed: {type(error).__name__}: {error}\n")

    async def _route(self, connection: ServerConnection, request: Request) -> Response:
        parsed = urllib.parse.urlsplit(request.path)
        if "Host" not in request.headers:  # HTTP/1.0, or not a browser: no name to check
            return connection.respond(400, NO_HOST)
        if not self.hosts.allows(request.headers.get("Host"), self.port):
            return connection.respond(403, "this server is not reached by that name\n")
        if parsed.path.startswith("/static/"):
            return static_file(parsed.path[len("/static/") :])
        if not token_ok(self.token, request):
            return connection.respond(401, "missing or wrong token: open the URL serve printed\n")
        query = urllib.parse.parse_qs(parsed.query)
        if parsed.path in ("/", "/index.html"):
            return dashboard_file(dashboard_dir() / "runs.html")
        if parsed.path == "/api/runs":
            return _json({"runs": await asyncio.to_thread(self.index.listing)})
        if parsed.path == "/api/metrics":
            ids = _ids(query)
            return _json({"metrics": await asyncio.to_thread(self.index.metrics, ids)})
        if parsed.path == "/api/series":
            return _json(await asyncio.to_thread(self.index.series, *_series_query(query)))
        if parsed.path.startswith("/run/"):
            run_id = urllib.parse.unquote(parsed.path[len("/run/") :].rstrip("/"))
            try:
                return _redirect(await asyncio.to_thread(self._page_url, run_id))
            except OSError as error:  # its log cannot be read: listed "unreadable" too
                return connection.respond(404, f"the run {run_id!r} cannot be shown: {error}\n")
        return connection.respond(404, "not found\n")

    def _page_url(self, run_id: str) -> str:
        """The run's own page: a followed run's server, or a replay server of the run's
        folder, started on its first visit."""
        from .replay import serve_folder

        with self.index.lock:
            run = self.index.runs[run_id]
        if isinstance(run, FollowedRun):
            return run.page + (f"?token={urllib.parse.quote(run.token)}" if run.token else "")
        with self._pages_lock:
            if run_id not in self.pages:
                self.pages[run_id] = serve_folder(run.folder, self.host, 0, self.token, quiet=True)
            return self.pages[run_id].url


async def _no_websocket(ws: ServerConnection) -> None:
    await ws.close(1008, "this server has no websocket: open its page")


def _ids(query: dict[str, list[str]]) -> list[str]:
    ids = [i for i in query.get("runs", [""])[0].split(",") if i]
    if not ids:
        raise ValueError("runs=ID[,ID…] is required")
    return ids


def _series_query(query: dict[str, list[str]]) -> tuple:
    metric = query.get("metric", [""])[0]
    if not metric:
        raise ValueError("metric=NAME is required")
    axis = query.get("axis", ["step"])[0]
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, not {axis!r}")
    points = int(query.get("points", ["1000"])[0])
    if not 1 <= points <= MAX_POINTS:
        raise ValueError(f"points must be between 1 and {MAX_POINTS}")
    bounds = [float(query[k][0]) if k in query else None for k in ("x0", "x1")]
    stats = tuple(query.get("stats", [",".join(STATS)])[0].split(","))
    if not stats or not set(stats) <= set(STATS):
        raise ValueError(f"stats must be some of {', '.join(STATS)}")
    return _ids(query), metric, axis, points, *bounds, stats


def _json(value: Any) -> Response:
    return http_response(200, msgspec.json.encode(value), "application/json")


def _redirect(location: str) -> Response:
    headers = Headers()
    headers["Location"] = location
    headers["Content-Length"] = "0"
    headers["Cache-Control"] = "no-store"
    return Response(302, "Found", headers, b"")
