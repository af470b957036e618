"""Who may connect: loopback servers are open, any other address requires a token."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
import urllib.parse
from collections.abc import Iterable

from websockets.http11 import Request

__all__ = [
    "is_loopback",
    "bind_address",
    "token_for",
    "token_ok",
    "HostCheck",
    "split_host",
    "WILDCARDS",
    "NO_HOST",
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_for(host: str, token: str | None) -> str | None:
    """``token``, or a fresh random one when ``host`` is not loopback and none was given.
    An empty token is refused: it would let anyone in."""
    if token == "":
        raise ValueError(
            "an empty token would let anyone in: give a token, or token=None (a random "
            "one is made for a non-loopback address)"
        )
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24)
    return token


def token_ok(token: str | None, request: Request) -> bool:
    """Whether ``request`` presents ``token`` (``?token=`` or ``Authorization: Bearer``);
    always true when there is no token."""
    if token is None:
        return True
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
    given = query.get("token", [""])[0]
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given = header[len("Bearer ") :]
    return hmac.compare_digest(given.encode(), token.encode())


WILDCARDS = ("0.0.0.0", "::")
NO_HOST = "bad request: a Host header is required (HTTP/1.1)\n"


def bind_address(host: str) -> str:
    """The address to listen on, in its one spelling: "" and every spelling of
    "every interface" (``0``, ``0.0``, ``0x0``, ``0:0::0``, ``[::]`` …) as
    ``0.0.0.0`` or ``::``, other IPv4 spellings dotted (``127.1`` → ``127.0.0.1``),
    an IPv6 address without brackets; a name as it is."""
    host = host.strip()
    if not host:
        return "0.0.0.0"
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare).compressed
    except ValueError:
        pass
    if any(c.isspace() for c in bare):
        return host
    try:  # what the system takes as IPv4: 0, 127.1, 0x7f.1, 2130706433
        return socket.inet_ntoa(socket.inet_aton(bare))
    except OSError:
        return host


def split_host(value: str) -> tuple[str, int | None]:
    """``'example.org:8080'`` → ``('example.org', 8080)``; IPv6 in brackets; lower case.
    Raises ValueError for what is not a host."""
    parsed = urllib.parse.urlsplit("//" + value.strip())
    host = parsed.hostname
    if not host or any(c.isspace() for c in value):
        raise ValueError(f"not a host: {value!r}")
    return host.lower(), parsed.port


class HostCheck:
    """The names a browser may reach this server by (DNS rebinding: a page of another
    site must not read it through a name of its own resolving here).

    Bound to a loopback address: that address, ``localhost``, ``127.0.0.1`` and
    ``::1``; bound to another address: that one; bound to every interface (a token is
    then required): any name. Plus ``extra`` names; and always this server's port.
    """

    def __init__(self, bound: str, extra: Iterable[str] = ()) -> None:
        self.any_name = bound in WILDCARDS
        names = {bound.lower(), *(name.lower() for name in extra)}
        if is_loopback(bound):
            names |= {"localhost", "127.0.0.1", "::1"}
        self.names = frozenset(names)

    def allows(self, host: str | None, port: int) -> bool:
        """Whether a ``Host`` header (``name[:port]``) names this server."""
        if host is None:
            return False
        try:
            name, given_port = split_host(host)
        except ValueError:
            return False
        return (self.any_name or name in self.names) and given_port in (None, port)

    def origin_ok(self, origin: str | None, port: int) -> bool:
        """Whether a browser's ``Origin`` is a page of this server (None: no browser)."""
        if origin is None:
            return True
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        return self.allows(parts.netloc, port)
