"""Opening files under the static root without ever leaving it, and reading them exactly.

Blocking: every function here runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from offload.static.assets import FileIdentity, Source
from offload.static.paths import is_within

READ_CHUNK_BYTES = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
_PROC_FD = Path("/proc/self/fd")


class TruncatedFile(OSError):
    """The file shrank while being read: never pad, never mix; end the response instead."""


def resolve_inside(root: str, path: str) -> str | None:
    """The symlink-free path, if it stays inside the root.

    Whether a name is hidden is decided by the path requested, as nginx and Caddy do: a
    Kubernetes ConfigMap volume serves ``app.css`` through ``..data/app.css``."""
    real_path = os.path.realpath(path)
    return real_path if is_within(root, real_path) else None


def open_inside(root: str, real_path: str) -> tuple[int, FileIdentity] | None:
    """An open descriptor and its identity, if ``real_path`` is a regular file inside the root
    at the moment it is opened. O_NONBLOCK: opening a FIFO must not hang the thread."""
    try:
        fd = os.open(real_path, _OPEN_FLAGS)
    except OSError:
        return None  # gone, unreadable, or swapped for a symlink since it was resolved
    try:
        status = os.fstat(fd)
        if stat.S_ISREG(status.st_mode) and _is_open_inside_root(root, fd):
            return fd, (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    except OSError:
        pass
    os.close(fd)
    return None


def _is_open_inside_root(root: str, fd: int) -> bool:
    """Check the file actually opened: a directory swapped for a symlink between resolving
    and opening must not lead outside the root."""
    try:
        return is_within(root, os.readlink(_PROC_FD / str(fd)))
    except FileNotFoundError:
        return not _PROC_FD.is_dir()  # no /proc here: the resolve checks stand alone


def read_exactly(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes from ``offset``, or `TruncatedFile`."""
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise TruncatedFile(f"file ended at byte {offset + len(data)} of {offset + length}")
        data += more
    return data


def read_source(fd: int, real_path: str, identity: FileIdentity) -> Source | None:
    """The content digest of an open file. The digest is of the bytes themselves, so every
    replica and every rebuild of the same file agrees."""
    size = identity[2]
    digest = hashlib.blake2b(digest_size=16)
    offset = 0
    try:
        while offset < size:
            chunk = read_exactly(fd, offset, min(READ_CHUNK_BYTES, size - offset))
            digest.update(chunk)
            offset += len(chunk)
    except OSError:
        return None  # changed while read: the watcher brings the next version
    return Source(digest.hexdigest(), size, None, real_path, identity)
