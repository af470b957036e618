"""Watching a running recipe from elsewhere: the websocket server, the dashboard it
serves, and clients (an event iterator, attached loggers). See :mod:`.protocol`.
``RunsServer``: the runs page of ``evloop serve`` (recorded and followed runs).

Each name is imported on first use: a client that only attaches or sends commands
(``evloop ctl``) never imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

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

if TYPE_CHECKING:
    from .client import Controller, NotAServer, attach, control, subscribe
    from .runs import RunsServer
    from .server import Server
    from .serving import serve, serve_bus

__getattr__ = lazy_names(
    __name__,
    {
        **dict.fromkeys(("Controller", "NotAServer", "attach", "control", "subscribe"), ".client"),
        "RunsServer": ".runs",
        "Server": ".server",
        "serve": ".serving",
        "serve_bus": ".serving",
    },
)
