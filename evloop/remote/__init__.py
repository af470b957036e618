"""Watching a running recipe from elsewhere: the websocket server, the dashboard it
serves, and clients (an event iterator, attached loggers). See :mod:`.protocol`.
``RunsServer``: the runs page of ``evloop serve`` (recorded and followed runs).

Each name is imported on first use: a client that only attaches or sends commands
(``evloop ctl``) never imports torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

_HOME = {
    "Controller": ".client",
    "NotAServer": ".client",
    "attach": ".client",
    "control": ".client",
    "subscribe": ".client",
    "RunsServer": ".runs",
    "Server": ".server",
    "serve": ".serving",
    "serve_bus": ".serving",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
