"""What clients send a server: each message within its address's budget, decoded,
acted on (a filter, a command); what is refused closes the connection with a code,
its reason and one log line."""

from __future__ import annotations

import logging
import re

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..mailbox import Filter
from .budgets import ClientBudgets
from .commands import CommandDesk
from .connections import Client, Encoded
from .protocol import Command, CommandResult, decode_client, encode_frame

__all__ = ["Inbox", "CLOSE_UNKNOWN", "CLOSE_MALFORMED", "CLOSE_POLICY"]

log = logging.getLogger("evloop")
CLOSE_UNKNOWN, CLOSE_MALFORMED, CLOSE_POLICY, CLOSE_INTERNAL = 1003, 1007, 1008, 1011


class Inbox:
    """``await Inbox(budgets, commands).receive(client)``: until the client leaves or
    is closed."""

    def __init__(self, budgets: ClientBudgets, commands: CommandDesk) -> None:
        self.budgets, self.commands = budgets, commands

    async def receive(self, client: Client) -> None:
        try:
            async for data in client.ws:
                over = self.budgets.message(client.address)
                if over is not None:  # nothing decoded, one close
                    await client.ws.close(CLOSE_POLICY, over)
                    return
                try:
                    refusal = await self._take_message(client, data)
                except ConnectionClosed:
                    raise
                except Exception as error:  # ours, not the client's: one line all the same
                    refusal = CLOSE_INTERNAL, f"the server failed: {type(error).__name__}"
                if refusal is not None:
                    await self._refuse(client, *refusal)
                    return
        except ConnectionClosed:
            return

    async def _take_message(self, client: Client, data: str | bytes) -> tuple[int, str] | None:
        """Act on one client message; the close code and reason when it is refused."""
        try:
            request = decode_client(data, client.fmt)
        except msgspec.ValidationError as error:
            unknown = re.search(r"\$\.type(?!\w)", str(error)) is not None
            return (CLOSE_UNKNOWN if unknown else CLOSE_MALFORMED), f"bad message: {error}"
        except msgspec.DecodeError as error:
            return CLOSE_MALFORMED, f"malformed: {error}"
        if isinstance(request, Command):
            await self._command(client, request)
            return None
        try:
            client.filter = Filter.from_tags(request.types, request.every)
        except ValueError as error:
            return CLOSE_MALFORMED, str(error)
        return None

    async def _refuse(self, client: Client, code: int, reason: str) -> None:
        """Close a connection that sent what it should not, with one log line."""
        reason = reason[:120]  # a close frame's reason is at most 123 bytes
        log.warning("closed the connection of %s (%d): %s", _peer(client.ws), code, reason)
        await client.ws.close(code, reason)

    async def _command(self, client: Client, request: Command) -> None:
        address = client.ws.remote_address
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        try:
            result = self.commands.handle(request, client.may_control, peer)
            frame = encode_frame(client.fmt, [Encoded(result).raw(client.fmt)])
        except Exception as error:  # an answer all the same, never a 1011
            log.warning("a command from %s failed: %r", peer, error)
            said = f"the command could not be handled ({type(error).__name__}: {error})"
            refused = CommandResult(id=request.id, ok=False, error=said)
            frame = encode_frame(client.fmt, [Encoded(refused).raw(client.fmt)])
        await client.ws.send(frame)


def _peer(ws: ServerConnection) -> str:
    """The client's address and port, as a log line or an event names it."""
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
