"""Who may connect: loopback servers are open, any other address requires a token."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import urllib.parse

from websockets.http11 import Request

__all__ = ["is_loopback", "token_for", "token_ok"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_for(host: str, token: str | None) -> str | None:
    """``token``, or a fresh random one when ``host`` is not loopback and none was given."""
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
