"""Files of a run folder, as a server may read them: resolved (links followed), and
only when they lie inside that folder (resolved too). A run folder is hostile input:
a link in it to ``/etc/passwd``, a name with ``..`` or an absolute path in its event
log must not reach a file elsewhere."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

__all__ = ["OutsideFolder", "inside", "contained"]

log = logging.getLogger("evloop")
_LOGGED_AT_MOST = 1000  # refusals remembered (each is logged once)
_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


class OutsideFolder(OSError):
    """A file of a run folder that leads outside it (a link, ``..``, an absolute path)
    or cannot be resolved."""


def inside(folder: Path, relative: str | Path) -> Path:
    """``folder / relative``, resolved; :class:`OutsideFolder` (logged once per path)
    when it does not lie inside ``folder``."""
    root = folder.resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # a link loop, a NUL byte
        _log_once(root, relative, f"cannot be resolved ({error})")
        raise OutsideFolder(f"{str(relative)[:100]!r} cannot be resolved") from None
    if root not in path.parents:
        _log_once(root, relative, "leads outside the run folder")
        raise OutsideFolder(f"{str(relative)[:100]!r} leads outside the run folder")
    return path


def contained(folder: Path, relative: str | Path) -> Path | None:
    """Like :func:`inside`, None instead of the error."""
    try:
        return inside(folder, relative)
    except OutsideFolder:
        return None


def _log_once(root: Path, relative: str | Path, why: str) -> None:
    key = (str(root), str(relative))
    with _logged_lock:
        if key in _logged or len(_logged) >= _LOGGED_AT_MOST:
            return
        _logged.add(key)
    log.warning("refused %r of %s: it %s", str(relative)[:200], root, why)
