"""Checkpoint files: host snapshots, atomic writes, and finding the newest intact one."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import logging
import os
import tempfile
from typing import Any

import torch

from .host import HostCopy

__all__ = [
    "host_snapshot",
    "atomic_save",
    "load",
    "load_latest",
    "remove_stale_partials",
    "new_file_mode",
    "TMP_SUFFIX",
    "CHECKSUM_SUFFIX",
]

log = logging.getLogger("evloop")
TMP_SUFFIX = ".partial"
CHECKSUM_SUFFIX = ".sha256"


def host_snapshot(state: Any) -> HostCopy:
    """A copy of a (nested) state dict in host memory, safe to write from another
    thread once ``.wait()`` returned: CUDA tensors are copied into pinned buffers
    without blocking, CPU tensors cloned."""
    return HostCopy(state, clone_cpu=True)


def fsync_directory(directory: str) -> None:
    """Make a rename or a new file in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(state: Any, path: str, checksum: bool = False) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over it;
    with ``checksum``, ``path + '.sha256'`` too (checked by :func:`load`).

    A crash at any point leaves either the previous file or the new one, never a torn
    file under ``path``. A full disk is an ``OSError`` saying so (the state is
    serialised in memory first, then written).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    _write_atomically(path, data)
    if checksum:
        _write_atomically(path + CHECKSUM_SUFFIX, hashlib.sha256(data).hexdigest().encode())
    fsync_directory(directory)


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file (0o666 less the umask): temporary files
    are created 0o600, and a checkpoint renamed from one would keep that."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def _write_atomically(path: str, data: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX, dir=directory
    )
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_partials(pattern: str) -> list[str]:
    """Temporary files of writes killed before their rename (``.<name>.*.partial``
    beside the files ``pattern`` matches): removed; returns them."""
    directory, name = os.path.split(pattern)
    stale = glob.glob(os.path.join(directory or ".", f".{name}.*{TMP_SUFFIX}"))
    for path in stale:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return stale


def load(path: str, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``: no code runs on load.
    When it was written with a checksum, a file that does not match is a ValueError."""
    if os.path.exists(path + CHECKSUM_SUFFIX):
        with open(path, "rb") as file:
            data = file.read()
        with open(path + CHECKSUM_SUFFIX, "rb") as file:
            expected = file.read().decode().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise ValueError(f"{path} does not match its checksum: the file is corrupt")
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest(pattern: str, map_location: Any = "cpu") -> tuple[str, Any] | None:
    """The newest file matching ``pattern`` (a glob, or a folder) that loads, and its state.

    Files that fail to load (torn by a crash before atomic writes, truncated copies)
    are skipped with a warning. None when there is none.
    """
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*.pth")
    candidates = [p for p in glob.glob(pattern) if not p.endswith((TMP_SUFFIX, CHECKSUM_SUFFIX))]
    for path in sorted(candidates, key=os.path.getmtime, reverse=True):
        try:
            return path, load(path, map_location)
        except Exception as error:  # a torn or foreign file: try the next one
            log.warning("skipping checkpoint %s: %s", path, error)
    return None
