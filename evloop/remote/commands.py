"""Commands from remote controllers: who may send them, and their answers."""

from __future__ import annotations

from websockets.http11 import Request

from ..control import Command, CommandError, Controls
from .auth import is_loopback, token_ok
from .protocol import Command as CommandMessage
from .protocol import CommandResult

__all__ = ["CommandDesk"]

READ_ONLY = (
    "this connection may only watch: commands need the control token "
    "(serve(..., control_token=...)); a read token cannot send them"
)


class CommandDesk:
    """Control is its own permission: a connection may send commands when it presents
    ``control_token``, or, with ``open_control=True`` and no control token, when the
    server listens on loopback only. A read token never allows it."""

    def __init__(
        self,
        controls: Controls | None,
        host: str,
        control_token: str | None = None,
        open_control: bool = False,
    ) -> None:
        if control_token == "":
            raise ValueError("an empty control token would let anyone steer the run")
        if open_control and not is_loopback(host):
            raise ValueError(
                f"open_control (commands without a token) is for loopback servers; {host!r} "
                "is not one: give a control_token"
            )
        self.controls = controls
        self.control_token = control_token
        self.open = open_control and control_token is None

    def admits(self, request: Request) -> bool:
        """Whether ``request`` presents the control token (it then may also watch)."""
        return self.control_token is not None and token_ok(self.control_token, request)

    def may_control(self, request: Request) -> bool:
        return self.controls is not None and (self.open or self.admits(request))

    def handle(self, message: CommandMessage, allowed: bool, client: str) -> CommandResult:
        """Queue the command for the next step boundary, or say why not."""
        if not allowed or self.controls is None:
            return CommandResult(id=message.id, ok=False, error=READ_ONLY)
        command = Command(op=message.op, values=message.values, id=message.id, client=client)
        try:
            self.controls.submit(command)
        except CommandError as error:
            return CommandResult(id=message.id, ok=False, error=str(error))
        return CommandResult(id=message.id, ok=True, settings=self.controls.describe())
