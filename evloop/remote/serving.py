"""Starting a server: for a bus, or for a recipe (with its controls)."""

from __future__ import annotations

from typing import Any

from ..bus import Bus
from .server import Server

__all__ = ["serve", "serve_bus"]


def serve_bus(
    bus: Bus, host: str = "127.0.0.1", port: int = 0, token: str | None = None, **options: Any
) -> Server:
    """Start a :class:`Server` for any bus; returns it once it listens."""
    return Server(bus, host, port, token, **options).start()


def serve(
    recipe: Any, host: str = "127.0.0.1", port: int = 0, token: str | None = None, **options: Any
) -> Server | None:
    """Serve a recipe's events over a websocket, with the live dashboard at
    ``server.url``; returns the started :class:`Server`.

    Loopback by default; any other host requires a token (generated and printed when
    not given). Per-step events are sampled ``every`` iterations (default 10, like a
    logger's ``log_every``; 1 sends every step). In a distributed run only rank 0
    serves: other ranks get None.

    ``control_token``: clients presenting it may steer the run (pause, set lr …, see
    :mod:`evloop.control`; the printed "steer it at" URL carries it); the read token
    never can. ``open_control=True`` allows commands without a token on a loopback
    server. ``allowed_hosts``: more names the server may be reached by.
    """
    if not recipe.publishes_here():
        return None
    controls = recipe.controls
    return serve_bus(
        recipe.bus,
        host,
        port,
        token,
        controls=controls,
        run_folder=controls.profiler.where,
        **options,
    )
