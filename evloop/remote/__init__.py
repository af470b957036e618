"""Watching a running recipe from elsewhere: the websocket server, the dashboard it
serves, and clients (an event iterator, attached loggers). See :mod:`.protocol`.
``RunsServer``: the runs page of ``evloop serve`` (recorded and followed runs)."""

from .client import Controller, NotAServer, attach, control, subscribe
from .runs import RunsServer
from .server import Server
from .serving import serve, serve_bus

__all__ = [
    "Controller",
    "NotAServer",
    "RunsServer",
    "Server",
    "attach",
    "control",
    "serve",
    "serve_bus",
    "subscribe",
]
