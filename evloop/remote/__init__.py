"""Watching a running recipe from elsewhere: the websocket server, the dashboard it
serves, and clients (an event iterator, attached loggers). See :mod:`.protocol`."""

from .client import attach, subscribe
from .server import Server, serve, serve_bus

__all__ = ["Server", "attach", "serve", "serve_bus", "subscribe"]
