"""Opening the files a user names (job specs, manifests, model tables) safely: regular files only, reads capped.

A FIFO, a device (``/dev/zero``, ``/dev/urandom``, a terminal), a socket or a folder given where a file is
expected would otherwise hang the command (opening a FIFO blocks until a writer comes; ``/dev/zero`` never
ends). :func:`open_regular` opens without blocking, then checks the *opened* file (``fstat``, so a file swapped
between a check and the open cannot slip through) and refuses anything but a regular file.
:func:`read_capped` also refuses a file over a size limit without reading it all.

Both raise :class:`NotARegularFileError` / :class:`FileTooLargeError`, subclasses of ``OSError`` whose
``strerror`` is the whole sentence, so every caller that already reports ``OSError`` as "cannot read FILE:
<strerror>" reports these too, with file, and exit 2.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["MAX_CONFIG_BYTES", "FileTooLargeError", "NotARegularFileError", "open_regular", "read_capped"]

#: Cap on a job spec or a ``--models`` file, in bytes (16 MiB: a spec is a few kilobytes).
MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024


class NotARegularFileError(OSError):
    """The path names a FIFO, a device, a socket or a folder, not a regular file (``strerror`` says which)."""


class FileTooLargeError(OSError):
    """The file is over the size limit of what it is read as (``strerror`` says the size and the limit)."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open ``path`` (symlinks followed) for binary reading if it is a regular file: ``(handle, size in bytes
    at open)``. Never blocks on a FIFO. Raises :class:`NotARegularFileError` (with what it is instead) and
    ``OSError`` (no such file, permission denied) as ``open`` does."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFileError(
                f"{path} is {_kind(info.st_mode)}; only a regular file can be read here (stat before open)"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: Path, *, max_bytes: int = MAX_CONFIG_BYTES, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` (bytes).

    Raises :class:`NotARegularFileError` (:func:`open_regular`), :class:`FileTooLargeError` naming ``what``
    (e.g. ``"job spec"``), its size and the limit when the file is larger (read at most ``max_bytes + 1``
    bytes, so a file that grows without end is refused too), and ``OSError`` as ``open`` does.
    """
    handle, size = open_regular(path)
    with handle:
        if size > max_bytes:
            raise FileTooLargeError(f"the {what} {path} is {size:,} bytes, over the {max_bytes:,}-byte limit")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(f"the {what} {path} is over the {max_bytes:,}-byte limit (it grows while read)")
    return data
