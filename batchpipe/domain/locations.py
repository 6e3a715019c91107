"""Image locations as URIs: how the ledger addresses a stored image, whatever store holds it.

``file:///abs/path.png`` for the local store (RFC 8089, made by :meth:`pathlib.Path.as_uri`),
``memory://images/...`` for the in-memory fake, ``s3://bucket/key`` for object storage. Pure string functions:
no I/O.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

__all__ = ["file_uri", "local_path"]


def file_uri(path: str | Path) -> str:
    """The ``file://`` URI of an absolute local path (percent-encoded). Raises ``ValueError`` for a relative one."""
    return Path(path).as_uri()


def local_path(uri: str | None) -> Path | None:
    """The local path a ``file://`` URI names (the inverse of :func:`file_uri`); None for None, another scheme, or
    a file URI with a remote host. A plain absolute path (as ledgers written before URIs hold) is returned as is."""
    if not uri:
        return None
    if uri.startswith("/"):
        return Path(uri)
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    return Path(url2pathname(parts.path))
