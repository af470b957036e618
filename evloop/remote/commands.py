"""Commands from remote controllers: who may send them, and their answers."""

from __future__ import annotations

import logging
from typing import Any

from websockets.http11 import Request

from ..codec import scalar
from ..control import Command, CommandError, Controls
from .auth import is_loopback, token_ok
from .protocol import Command as CommandMessage
from .protocol import CommandResult

__all__ = ["CommandDesk"]

log = logging.getLogger("evloop")

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
        """Queue the command for the next step boundary, or say why not: whatever
        goes wrong in checking it is an answer, never a dropped connection."""
        if not allowed or self.controls is None:
            return CommandResult(id=message.id, ok=False, error=READ_ONLY)
        command = Command(op=message.op, values=message.values, id=message.id, client=client)
        try:
            self.controls.submit(command)
        except CommandError as error:
            return CommandResult(id=message.id, ok=False, error=str(error))
        except Exception as error:  # a setting's own check or lookup that broke
            log.warning("a command from %s could not be checked: %r", client, error)
            said = f"the command could not be checked ({type(error).__name__}: {error})"
            return CommandResult(id=message.id, ok=False, error=said)
        return CommandResult(id=message.id, ok=True, settings=self._settings())

    def _settings(self) -> dict[str, Any]:
        """The settings' values as the wire carries them (a one-element tensor as its
        number, anything else a client cannot decode as its text)."""
        assert self.controls is not None
        try:
            described = self.controls.describe()
        except Exception as error:  # a getter that broke: the command is queued anyway
            log.warning("the run's settings could not be read: %r", error)
            return {}
        return {name: _wire_value(value) for name, value in described.items()}


def _wire_value(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return repr(value)[:80]  # beyond the wire's integers
    number = scalar(value)  # a number, or a one-element tensor's
    if number is not None or isinstance(value, str):
        return value if number is None else number
    return repr(value)[:80]
