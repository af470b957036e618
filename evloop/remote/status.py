"""The status a server shows its clients with every frame, encoded once per format
until it changes."""

from __future__ import annotations

import logging

import msgspec

from .commands import CommandDesk
from .connections import Encoded
from .history import RunHistory
from .protocol import Status

__all__ = ["ShownStatus"]

log = logging.getLogger("evloop")


class ShownStatus:
    """The run's status as its events left it (``history.status``), with the settings'
    values read from the run now, or a state forced by :meth:`show` (a replayed run
    whose log went silent is "stale")."""

    def __init__(self, history: RunHistory, commands: CommandDesk) -> None:
        self._history, self._commands = history, commands
        self._raw: dict[str, msgspec.Raw] = {}
        self._forced: tuple[str, str | None] | None = None

    def changed(self) -> None:
        """An event changed the status: encode it again when next asked."""
        self._raw = {}

    def show(self, forced: tuple[str, str | None] | None) -> None:
        """Show this state and error whatever the events said (None: as they said)."""
        self._forced = forced
        self._raw = {}

    def raw(self, fmt: str) -> msgspec.Raw:
        """The status, encoded in ``fmt``."""
        cached = self._raw.get(fmt)
        if cached is None:
            self._refresh_settings()
            cached = self._raw[fmt] = Encoded(self.now()).raw(fmt)
        return cached

    def history(self) -> Encoded:
        """A new client's history (the recorded points), with the status as shown."""
        return Encoded(msgspec.structs.replace(self._history.snapshot(), status=self.now()))

    def now(self) -> Status:
        """The status as shown."""
        status = self._history.status
        if self._forced is None:
            return status
        state, error = self._forced
        return msgspec.structs.replace(status, state=state, error=error)

    def _refresh_settings(self) -> None:
        """The settings' values now, read from the run (a scheduler moves ``lr`` every
        step; the events say only what controllers changed)."""
        controls = self._commands.controls
        status = self._history.status
        if controls is None or status.state not in ("running", "paused", "stopping"):
            return
        try:
            status.settings = controls.describe()
        except Exception:  # a setting whose owner went away: keep what the events said
            log.debug("settings could not be read", exc_info=True)
