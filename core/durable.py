"""Replace a small state file so that after a crash or power loss it is either the old or the
new content, whole: write a temporary file, fsync it, rename it over the old one, fsync the
folder (the rename itself is only durable once the folder is). Used for the adapter registry
and the API key store."""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write every byte: a short write (a signal, a full pipe) continues, never half a record."""
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


def write_atomic(path: Path, text: str, *, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # O_CREAT's mode is narrowed by the umask, never widened
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
