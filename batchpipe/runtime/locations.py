"""Where state lives, chosen by URL: the ledger (``--ledger`` / ``BATCHPIPE_LEDGER``) and the image store
(``--store`` / ``BATCHPIPE_STORE``).

Ledger URLs:

* none: ``<workdir>/ledger.sqlite`` (the single-machine default);
* ``sqlite:////abs/path.sqlite`` (``sqlite:///rel.sqlite`` is relative, as in SQLAlchemy) or a plain path: that
  SQLite file;
* ``postgresql://user@host:5432/db``: :class:`~batchpipe.adapters.postgres_ledger.PostgresLedger`, shared by
  workers on several machines (``pip install 'batchpipe[cluster]'``).

Store URLs:

* none: the job's output folder (:class:`~batchpipe.adapters.local_store.LocalImageStore`);
* ``file:///abs/folder`` or a plain path: that folder;
* ``s3://bucket/prefix``: :class:`~batchpipe.adapters.s3_store.S3ImageStore`, with endpoint and credentials from
  ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` (never from the URL).

The PostgreSQL and S3 adapters are imported only when their URL is used, so the default install does not need
psycopg or obstore.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from batchpipe.adapters.local_store import LocalImageStore
from batchpipe.adapters.sqlite_ledger import SqliteLedger, open_ledger
from batchpipe.domain.locations import local_path
from batchpipe.errors import InputError
from batchpipe.ports import ImageStore, Ledger

__all__ = [
    "LEDGER_ENV",
    "STORE_ENV",
    "describe_ledger",
    "describe_store",
    "is_shared_ledger",
    "ledger_exists",
    "ledger_url",
    "open_ledger_url",
    "open_store_url",
    "store_url",
]

#: The environment variables that choose the ledger and the image store when no option is given.
LEDGER_ENV: Final = "BATCHPIPE_LEDGER"
STORE_ENV: Final = "BATCHPIPE_STORE"
_CLUSTER_EXTRA: Final = "pip install 'batchpipe[cluster]'"


def ledger_url(option: str | None, environ: Mapping[str, str]) -> str | None:
    """The ledger URL in force: ``--ledger``, else ``BATCHPIPE_LEDGER``, else None (the workdir's SQLite file)."""
    return option or environ.get(LEDGER_ENV) or None


def store_url(option: str | None, environ: Mapping[str, str]) -> str | None:
    """The store URL in force: ``--store``, else ``BATCHPIPE_STORE``, else None (the job's output folder)."""
    return option or environ.get(STORE_ENV) or None


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _path_of(url: str, what: str) -> Path:
    """The local path of a ``sqlite:///``/``file://`` URL or a plain path. Raises InputError for another scheme."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))  # sqlite:///relative, sqlite:////absolute (as SQLAlchemy)
    if url.startswith("file:"):
        path = local_path(url)
        if path is not None:
            return path
    if "://" in url:
        raise InputError(f"unsupported URL scheme: {url.split('://', 1)[0]}://", file=what)
    return Path(url)


def open_ledger_url(url: str | None, workdir: Path, *, clock: Callable[[], float] | None = None) -> Ledger:
    """Open the ledger ``url`` names (None: ``<workdir>/ledger.sqlite``), creating its schema if it is new.

    Raises :class:`~batchpipe.errors.InputError` (exit 2) for an unsupported URL or a missing ``cluster`` extra,
    and :class:`~batchpipe.errors.LedgerError` if it cannot be opened."""
    tick = time.time if clock is None else clock
    if not url:
        return open_ledger(workdir) if clock is None else SqliteLedger(workdir / "ledger.sqlite", clock=tick)
    if _is_postgres(url):
        try:
            from batchpipe.adapters.postgres_ledger import PostgresLedger
        except ImportError as exc:
            raise InputError(f"a PostgreSQL ledger needs psycopg: {_CLUSTER_EXTRA} ({exc})", file="--ledger") from exc
        return PostgresLedger(url, clock=tick)
    return SqliteLedger(_path_of(url, "--ledger"), clock=tick)


def is_shared_ledger(url: str | None) -> bool:
    """True for a ledger other machines can share (a PostgreSQL URL): its runs' shard files then travel through
    the image store (``Runner(publish_shards=True)``) and ``batchpipe worker`` can join them."""
    return bool(url) and _is_postgres(str(url))


def ledger_exists(url: str | None, workdir: Path) -> bool:
    """True if there may be a ledger to read: a server URL (its schema is made on first use), or an existing
    SQLite file."""
    if url and _is_postgres(url):
        return True
    return (_path_of(url, "--ledger") if url else workdir / "ledger.sqlite").is_file()


def describe_ledger(url: str | None, workdir: Path) -> str:
    """Where the ledger is, for messages (a server URL without its password)."""
    if not url:
        return str(workdir / "ledger.sqlite")
    if _is_postgres(url):
        from batchpipe.adapters.postgres_ledger import redact_url

        return redact_url(url)
    return str(_path_of(url, "--ledger"))


def open_store_url(url: str | None, output_dir: Path, environ: Mapping[str, str]) -> ImageStore:
    """Open the image store ``url`` names (None: a local store on ``output_dir``); S3 settings from the AWS
    variables in ``environ``. Raises :class:`~batchpipe.errors.InputError` (exit 2) for an unsupported or
    malformed URL or a missing ``cluster`` extra."""
    if not url:
        return LocalImageStore(output_dir)
    if url.startswith("s3://"):
        try:
            from batchpipe.adapters.s3_store import open_s3_store
        except ImportError as exc:
            raise InputError(f"an S3 image store needs obstore: {_CLUSTER_EXTRA} ({exc})", file="--store") from exc
        try:
            return open_s3_store(url, environ)
        except ValueError as exc:
            raise InputError(str(exc), file="--store") from exc
    return LocalImageStore(_path_of(url, "--store"))


def describe_store(url: str | None, output_dir: Path) -> str:
    """Where the images go, for messages."""
    return url if url and url.startswith("s3://") else str(_path_of(url, "--store") if url else output_dir)
