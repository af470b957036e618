"""Watching a running recipe from elsewhere: the websocket server, the dashboard it
serves, and clients (an event iterator, attached loggers). See :mod:`.protocol`."""

from .client import Controller, attach, control, subscribe
from .server import Server
from .serving import serve, serve_bus

__all__ = ["Controller", "Server", "attach", "control", "serve", "serve_bus", "subscribe"]
