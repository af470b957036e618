"""Checkpoint files: host snapshots, atomic writes, and finding the newest intact one."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import tempfile
from typing import Any

import torch

from .host import HostCopy

__all__ = ["host_snapshot", "atomic_save", "load", "load_latest", "TMP_SUFFIX"]

log = logging.getLogger("evloop")
TMP_SUFFIX = ".partial"


def host_snapshot(state: Any) -> HostCopy:
    """A copy of a (nested) state dict in host memory, safe to write from another
    thread once ``.wait()`` returned: CUDA tensors are copied into pinned buffers
    without blocking, CPU tensors cloned."""
    return HostCopy(state, clone_cpu=True)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(state: Any, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over it.

    A crash at any point leaves either the previous file or the new one, never a torn
    file under ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX, dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def load(path: str, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``: no code runs on load."""
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest(pattern: str, map_location: Any = "cpu") -> tuple[str, Any] | None:
    """The newest file matching ``pattern`` (a glob, or a folder) that loads, and its state.

    Files that fail to load (torn by a crash before atomic writes, truncated copies)
    are skipped with a warning. None when there is none.
    """
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*.pth")
    candidates = [p for p in glob.glob(pattern) if not p.endswith(TMP_SUFFIX)]
    for path in sorted(candidates, key=os.path.getmtime, reverse=True):
        try:
            return path, load(path, map_location)
        except Exception as error:  # a torn or foreign file: try the next one
            log.warning("skipping checkpoint %s: %s", path, error)
    return None
