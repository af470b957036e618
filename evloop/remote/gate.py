"""Who gets what over HTTP: the dashboard page and its assets, a replayed run's media,
a run's profile traces,
and the websocket's gate (handshake budget, Host, token, Origin, the number of
clients)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .auth import NO_HOST, HostCheck, token_ok
from .commands import CommandDesk
from .http import dashboard_dir, dashboard_file, media_file, profile_file, static_file

__all__ = ["Gate"]


class Gate:
    """The checks of a server's HTTP requests, in order: its address's handshake
    budget (429), a Host header (400) naming this server (403), then per path the
    read or control token (401), a browser's Origin (403), ``max_clients`` (503)."""

    def __init__(
        self,
        hosts: HostCheck,
        token: str | None,
        commands: CommandDesk,
        max_clients: int,
        media_root: Path | None,
        run_folder: Callable[[], str | None] | None = None,
    ) -> None:
        self.hosts, self.token, self.commands = hosts, token, commands
        self.max_clients, self.media_root = max_clients, media_root
        self.run_folder = run_folder  # a live run's folder, where its profiles go

    def answer(
        self, connection: ServerConnection, request: Request, port: int, clients: int
    ) -> Response | None:
        """The response to ``request`` (None: let its websocket in), on a server at
        ``port`` with ``clients`` clients."""
        parsed = urllib.parse.urlsplit(request.path)
        refusal = getattr(connection, "refusal", None)
        if refusal is not None:  # its address went over its handshake budget
            return connection.respond(429, refusal)
        if "Host" not in request.headers:  # HTTP/1.0, or not a browser: no name to check
            return connection.respond(400, NO_HOST)
        if not self.hosts.allows(request.headers.get("Host"), port):
            return connection.respond(
                403, "this server is not reached by that name (allowed_hosts=... to add it)\n"
            )
        if parsed.path == "/ws":
            if not (token_ok(self.token, request) or self.commands.admits(request)):
                return connection.respond(401, "missing or wrong token\n")
            if not self.hosts.origin_ok(request.headers.get("Origin"), port):
                return connection.respond(403, "cross-origin websocket refused\n")
            if clients >= self.max_clients:
                return connection.respond(503, f"{self.max_clients} clients already\n")
            return None
        if parsed.path in ("/", "/index.html"):
            if not (token_ok(self.token, request) or self.commands.admits(request)):
                return connection.respond(
                    401, "missing or wrong token: open the URL the server printed\n"
                )
            return dashboard_file(dashboard_dir() / "index.html")
        if parsed.path.startswith("/static/"):
            return static_file(parsed.path[len("/static/") :])
        if parsed.path.startswith("/media/") and self.media_root is not None:
            if not token_ok(self.token, request):
                return connection.respond(401, "missing or wrong token\n")
            return media_file(self.media_root, parsed.path[len("/media/") :])
        if parsed.path.startswith("/profiles/"):
            folder = self._profiles_folder()
            if folder is None:
                return connection.respond(404, "not found\n")
            if not (token_ok(self.token, request) or self.commands.admits(request)):
                return connection.respond(401, "missing or wrong token\n")
            return profile_file(folder, parsed.path[len("/profiles/") :])
        return connection.respond(404, "not found\n")

    def _profiles_folder(self) -> Path | None:
        """The run folder whose ``profiles/`` this server hands out: a replay's, or
        where the live run writes its profiles."""
        if self.media_root is not None:
            return self.media_root
        folder = self.run_folder() if self.run_folder is not None else None
        return None if folder is None else Path(folder)
