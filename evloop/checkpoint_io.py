"""Checkpoint files: host snapshots, atomic writes, and finding the newest intact one."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import logging
import os
import secrets
import zipfile
from typing import Any

import torch

from .host import HostCopy

__all__ = [
    "host_snapshot",
    "atomic_save",
    "load",
    "load_latest",
    "remove_stale_partials",
    "remove_checkpoint",
    "verify_records",
    "new_file_mode",
    "TMP_SUFFIX",
    "CHECKSUM_SUFFIX",
]

log = logging.getLogger("evloop")
TMP_SUFFIX = ".partial"
CHECKSUM_SUFFIX = ".sha256"
MAX_DIGESTS = 4


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
    file under ``path``, and never a good file beside a digest that rejects it: the
    digest file lists the new digest (with the previous one) before the new file
    replaces the old, and only the new one after. A full disk is an ``OSError``
    saying so (the state is serialised in memory first, then written).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    digest_path = path + CHECKSUM_SUFFIX
    name = os.path.basename(path)
    if checksum:
        digest = hashlib.sha256(data).hexdigest()
        accepted = [digest, *_digests(digest_path)][:MAX_DIGESTS]
        _write_atomically(digest_path, _digest_lines(accepted, name))
    else:  # a digest of an earlier file would reject this one
        with contextlib.suppress(FileNotFoundError):
            os.unlink(digest_path)
    try:
        _write_atomically(path, data)
    except BaseException:
        if checksum and not os.path.exists(path):  # no file for the digest to describe
            with contextlib.suppress(OSError):
                os.unlink(digest_path)
        raise
    if checksum:  # in ``sha256sum``'s format: ``sha256sum -c ckpt.pth.sha256`` checks it
        _write_atomically(digest_path, _digest_lines([digest], name))
    fsync_directory(directory)


def _digest_lines(digests: list[str], name: str) -> bytes:
    return "".join(f"{digest}  {name}\n" for digest in digests).encode()


def _digests(digest_path: str) -> list[str]:
    """The digests a checksum file accepts (one; two while a write is under way)."""
    try:
        with open(digest_path, "rb") as file:
            text = file.read(4096).decode("ascii", "replace")
    except FileNotFoundError:
        return []
    return [line.split()[0] for line in text.splitlines() if line.strip()][:MAX_DIGESTS]


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
    # O_EXCL with a random name, as mkstemp, but with the usual mode (0666 less the
    # umask): a checkpoint is a file people share, not a private temporary file
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_checkpoint(path: str) -> None:
    """Remove a checkpoint file and its digest file (those that exist)."""
    for name in (path, path + CHECKSUM_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def remove_stale_partials(pattern: str) -> list[str]:
    """Temporary files of writes killed before their rename (``.<name>.*.partial``
    beside the files ``pattern`` matches), and digest files whose checkpoint a killed
    write never made: removed; returns them."""
    directory, name = os.path.split(pattern)
    stale = glob.glob(os.path.join(directory or ".", f".{name}.*{TMP_SUFFIX}"))
    stale += [
        digest
        for digest in glob.glob(pattern + CHECKSUM_SUFFIX)
        if not os.path.exists(digest[: -len(CHECKSUM_SUFFIX)])
    ]
    for path in stale:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return stale


def verify_records(source: str | io.BytesIO, name: str) -> None:
    """A ValueError naming ``name`` unless every record of the checkpoint's zip
    container matches its CRC-32 (a flipped bit, a truncated copy). Files of torch's
    legacy format (not zip) are left to ``torch.load``."""
    if not zipfile.is_zipfile(source):
        return
    try:
        with zipfile.ZipFile(source) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{name} is corrupt: {error}") from None
    if bad is not None:
        raise ValueError(f"{name} is corrupt: its record {bad!r} does not match its CRC-32")


def load(path: str, map_location: Any = "cpu", verify: bool = True) -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``: no code runs on load.

    With ``verify`` (the default), the file's SHA-256 digest is checked first when it
    was written with a checksum, else every record's CRC-32: a file that does not
    match is a ValueError naming it, and nothing is loaded.
    """
    digest_path = path + CHECKSUM_SUFFIX
    if verify and os.path.exists(digest_path):
        with open(path, "rb") as file:
            data = file.read()
        if hashlib.sha256(data).hexdigest() not in _digests(digest_path):
            raise ValueError(f"{path} does not match its checksum: the file is corrupt")
        # every byte is as written: the records' CRCs have nothing to add
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if verify:
        verify_records(path, path)
    return torch.load(path, map_location=map_location, weights_only=True)


def _newest_state_first(path: str) -> tuple[float, bool]:
    """A checkpoint's modification time is when its state was taken; of a file and its
    ``_best`` copy, the file comes first."""
    return os.path.getmtime(path), not os.path.splitext(path)[0].endswith("_best")


def load_latest(pattern: str, map_location: Any = "cpu") -> tuple[str, Any] | None:
    """The newest file matching ``pattern`` (a glob, or a folder) that loads, and its state.

    Newest by modification time, which a :class:`~evloop.callbacks.Checkpoint` sets to
    when the file's state was taken (a concurrent evaluation's file is written later
    than files of later steps); of a file and its ``_best`` copy, the file.

    Files that fail to load or to verify (torn by a crash before atomic writes,
    truncated copies, a flipped bit) are skipped with a warning saying why. None when
    there is none.
    """
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*.pth")
    candidates = [p for p in glob.glob(pattern) if not p.endswith((TMP_SUFFIX, CHECKSUM_SUFFIX))]
    for path in sorted(candidates, key=_newest_state_first, reverse=True):
        try:
            return path, load(path, map_location)
        except Exception as error:  # a torn or foreign file: try the next one
            log.warning("skipping checkpoint %s: %s", path, error)
    return None
