"""A forked run's lineage: ``fork.json`` in its run folder, written by
:func:`evloop.fork.fork`, copied into the folder's ``summary.json`` as ``lineage``.

Fields: ``parent`` (the parent run folder's name, as a runs page lists it),
``parent_dir`` (its path when the fork was made), ``checkpoint`` (the parent's
checkpoint, relative to the parent's folder), ``iters`` and ``epoch`` (where that
checkpoint's state stands: the fork's first step is ``iters + 1``), ``settings``
(what the fork changed), ``time`` (when it was made)."""

from __future__ import annotations

import os
from typing import Any

import msgspec

from .decoding import decode_any_json

__all__ = ["FORK_FILE", "read_lineage", "write_lineage"]

FORK_FILE = "fork.json"
MAX_LINEAGE = 64 * 1024  # bytes: a few fields


def read_lineage(directory: str) -> dict[str, Any] | None:
    """The lineage recorded in ``directory`` (None: not a fork, or unreadable)."""
    path = os.path.join(directory, FORK_FILE)
    try:
        if os.path.getsize(path) > MAX_LINEAGE:
            return None
        with open(path, "rb") as file:
            fields = decode_any_json(file.read())
    except (OSError, msgspec.DecodeError):
        return None
    return fields if isinstance(fields, dict) else None


def write_lineage(directory: str, lineage: dict[str, Any]) -> str:
    """``fork.json`` in ``directory`` (created, never overwritten); its path."""
    path = os.path.join(directory, FORK_FILE)
    with open(path, "xb") as file:
        file.write(msgspec.json.encode(lineage))
    return path
