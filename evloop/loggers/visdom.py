"""VisdomLogger: Torchélie's visdom widgets, fed from the async lane.

Needs ``pip install 'evloop[visdom]'`` (imported only when a logger is created).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import anyio
import torch

from ..bus import Subscriber
from ..codec import scalar
from ..events import BatchEnded, EpochEnded, EvalFinished, Event
from ..figures import figure_image
from ..kinds import Kind, kind_in
from ..mailbox import Mailbox
from ..reports import unit_range
from .stdout import batch_every

__all__ = ["VisdomLogger"]

log = logging.getLogger("evloop")
MAX_PENDING = 100_000  # points and values kept while the server is away; the oldest go

# One pending update: (widget, window, value); points are ("line", window, (x, y)).
Update = tuple[str, str, Any]
WIDGETS = {
    Kind.SCALAR: "line",
    Kind.TEXT: "text",
    Kind.HTML: "text",
    Kind.HEATMAP: "heatmap",
    Kind.IMAGE: "image",
    Kind.IMAGES: "images",
    Kind.FIGURE: "figure",
    Kind.CUSTOM: "custom",
}


def _image_batch(images: torch.Tensor) -> torch.Tensor:
    images = images.detach().float().cpu()
    return unit_range(images, force=images.shape[1] == 1)


class VisdomLogger(Subscriber):
    """Logs ``metrics`` to a visdom server.

    Numbers become lines (x: the iteration), strings and reports HTML, 2-D tensors
    heatmaps, 3-D images, 4-D image grids; objects with ``to_visdom(vis, name)`` draw
    themselves. Windows are named ``prefix + key``.

    It receives batch ends every ``log_every`` iterations (``-1``: epoch ends only),
    epoch ends when ``post_epoch_ends``, and evaluation results (``EvalFinished``,
    shown as ``<prefix>_<key>``). Its policy is ``drop_oldest`` over 4,096 events:
    ``handle`` only queues, so it keeps every point unless the event loop is starved.

    Requests run in a worker thread, each with a ``timeout``; points are coalesced per
    window into one request. A server that is down or stops answering gets one
    warning; logging resumes when it is back (points kept meanwhile, at most 10,000
    per window). Unknown value types are skipped with one warning. Creating a logger
    never closes existing windows. ``visdom_env=None`` turns it off (it receives
    nothing and never needs visdom), as in Torchélie.
    """

    # handle() only queues (cheap): keep every point unless the loop is starved.
    policy = "drop_oldest"
    maxsize = 4096

    def __init__(
        self,
        visdom_env: str | None = "main",
        log_every: int = 10,
        prefix: str = "",
        post_epoch_ends: bool = True,
        server: str = "http://localhost",
        port: int = 8097,
        timeout: float = 5.0,
        retry_every: float = 2.0,
    ) -> None:
        self.every = batch_every(log_every)
        if visdom_env is not None:
            import visdom  # noqa: F401 - fail here, clearly, if the extra is missing

        self.visdom_env = visdom_env
        self.log_every = log_every
        self.prefix = prefix
        self.server, self.port = server, port
        self.timeout, self.retry_every = timeout, retry_every
        types: list[type[Event]] = [EvalFinished]
        if log_every > 0:
            types.append(BatchEnded)
        if post_epoch_ends:
            types.append(EpochEnded)
        self.types = tuple(types) if visdom_env is not None else ()
        # points never coalesce; a window's latest image or text replaces the older one
        self._pending: Mailbox[Update] = Mailbox(MAX_PENDING, "latest")
        self._unsent: list[Update] = []  # what the server did not take, sent first
        self._client: Any = None
        self._given_client: Any = None  # a client the user set (Torchélie's ``.vis``)
        self._worker: threading.Thread | None = None
        self._in_flight: list[Update] = []
        self._started = 0.0
        self._result = False
        self._down_since: float | None = None
        self._next_try = 0.0
        self._warned_types: set[str] = set()

    @property
    def name(self) -> str:
        return f"VisdomLogger[{self.visdom_env}:{self.prefix}]"

    @property
    def state_key(self) -> str:
        return self.name

    # -- events → pending updates (event loop thread) ----------------------------------
    def handle(self, event: Event) -> None:
        if isinstance(event, EvalFinished):
            self._queue(event.iters, event.metrics, event.kinds, f"{event.prefix}_")
        elif isinstance(event, BatchEnded | EpochEnded):
            self._queue(event.iters, event.metrics, event.kinds, "")

    def _queue(
        self, iters: int, metrics: dict[str, Any], kinds: dict[str, str], extra_prefix: str
    ) -> None:
        for key, value in metrics.items():
            window = f"{self.prefix}{extra_prefix}{key}"
            kind = kind_in(kinds, key, value)
            if kind is None:
                continue  # of no kind: named once when it was posted
            widget = WIDGETS.get(kind)
            if widget is None:
                if key not in self._warned_types:
                    self._warned_types.add(key)
                    log.warning("VisdomLogger: skipping %r, a %s has no visdom widget", key, kind)
            elif widget == "line":
                self._pending.put(("line", window, (iters, float(scalar(value)))))  # type: ignore[arg-type]
            else:
                self._pending.put((widget, window, value), key=window)

    def flush(self) -> None:
        """Start sending what is pending in a worker thread, unless one is in flight or
        the server was down less than ``retry_every`` ago. Never waits."""
        self._reap()
        if self._worker is not None or time.monotonic() < self._next_try:
            return
        batch = self._unsent + self._pending.take()
        self._unsent = []
        if not batch:
            return
        self._worker = threading.Thread(
            target=self._send_into, args=(batch,), name="evloop-visdom", daemon=True
        )
        self._in_flight = batch
        self._started = time.monotonic()
        self._worker.start()

    def _reap(self) -> None:
        """Settle the worker's outcome once it ended, or abandon it past its deadline."""
        if self._worker is None:
            return
        if self._worker.is_alive():
            if time.monotonic() - self._started < 2 * self.timeout:
                return
            self._client = None  # the hung worker keeps its session; start afresh
            self._result = False
        self._worker = None
        self._settle(self._result, self._in_flight)

    async def finish(self) -> None:
        """At the end of a run: send what is pending, waiting at most ``timeout``."""
        self._next_try = 0.0
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self.flush()
            if self._worker is None:
                return  # nothing pending, or the server is down: keep it for later
            await anyio.sleep(0.01)

    def _send_into(self, batch: list[Update]) -> None:
        self._result = self._send(batch)

    def _settle(self, ok: bool, batch: list[Update]) -> None:
        if ok:
            if self._down_since is not None:
                log.warning("VisdomLogger: %s:%s is back, logging resumed", self.server, self.port)
            self._down_since = None
            return
        self._unsent = batch[-MAX_PENDING:] + self._unsent
        self._next_try = time.monotonic() + self.retry_every
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "VisdomLogger: visdom server %s:%s does not answer; training goes "
                "on and logging resumes when it is back",
                self.server,
                self.port,
            )

    @property
    def vis(self) -> Any:
        """The visdom client in use (None before the first request). Set it, as
        Torchélie's scripts do (``recipe.callbacks.cbs[-1][0].vis = Visdom(...)``), to
        send through your own client: it is used from the logger's worker thread."""
        return self._client if self._client is not None else self._given_client

    @vis.setter
    def vis(self, client: Any) -> None:
        self._given_client = self._client = client

    # -- worker thread ------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._given_client is not None:
            return self._given_client
        import requests
        import visdom

        assert self.visdom_env is not None  # a disabled logger receives nothing
        client: Any = visdom.Visdom(
            server=self.server,
            port=self.port,
            env=self.visdom_env,
            send=False,
            use_incoming_socket=False,
            raise_exceptions=True,
        )
        session = requests.Session()
        post = session.post

        def post_checked(url: str, **kwargs: Any) -> Any:
            response = post(url, timeout=self.timeout, **kwargs)
            response.raise_for_status()
            return response

        session.post = functools.partial(post_checked)  # type: ignore[method-assign]
        client._session = session
        client.send = True
        client._send({"eid": self.visdom_env}, endpoint=f"env/{self.visdom_env}")
        return client

    def _send(self, batch: list[Update]) -> bool:
        points: dict[str, list[tuple[int, float]]] = {}
        latest: dict[str, tuple[str, Any]] = {}
        for widget, window, value in batch:
            if widget == "line":
                points.setdefault(window, []).append(value)
            else:
                latest[window] = (widget, value)
        try:
            if self._client is None:
                self._client = self._connect()
            vis = self._client
            # a cheap request first: visdom's own calls print tracebacks when it is down
            vis._win_exists_wrap("evloop-ping", self.visdom_env)
            for window, window_points in points.items():
                xs, ys = zip(*window_points, strict=True)
                vis.line(
                    X=list(xs), Y=list(ys), win=window, update="append", opts={"title": window}
                )
            for window, (widget, value) in latest.items():
                self._show(vis, window, widget, value)
            return True
        except Exception as error:  # down, hung, refused: the caller keeps the data
            log.debug("VisdomLogger send failed: %r", error)
            self._client = None  # a restarted server needs the env created again
            return False

    def _show(self, vis: Any, window: str, kind: str, value: Any) -> None:
        opts = {"title": window}
        if kind == "text":
            vis.text(str(value), win=window, opts=opts)
        elif kind == "heatmap":
            vis.heatmap(value.detach().float().cpu(), win=window, opts=opts)
        elif kind == "image":
            vis.image(_image_batch(value[None])[0], win=window, opts=opts)
        elif kind == "figure":  # rendered here, in the logger's worker thread
            vis.image(figure_image(value), win=window, opts=opts)
        elif kind == "images":
            vis.images(_image_batch(value), win=window, opts=opts)
        else:
            value.to_visdom(vis, window)
