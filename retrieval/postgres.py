"""The PostgreSQL store of a deployment: settings, the connection pool, and the schema kbqa keeps there.

One database (one schema) holds every knowledge base of a deployment as rows: their manifests,
documents, chunks with their pgvector vectors, the lexical terms, and (see `app/jobs/pg_queue.py`) the job
queue and the uploaded originals. Any number of kbqa nodes and workers share it, so none keeps state
of its own on disk. psycopg is imported only here, and only when this backend is used.

The schema (`pg_schema.py`) is created and upgraded by kbqa itself, step by step, under an advisory lock
(two nodes starting together upgrade it once); its version is kept in `kbqa_schema`, and a database whose
schema is newer than this kbqa is refused with one clear line rather than misread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from retrieval.errors import DatabaseError, DatabaseUnavailable
from retrieval.pg_schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

# The advisory lock that serialises schema upgrades (an arbitrary constant of kbqa's).
SCHEMA_LOCK = 0x6B627161  # "kbqa"
# The advisory-lock class of one knowledge base's writer (the second key is its id).
WRITER_LOCK_CLASS = 0x6B6271
# The advisory-lock class of building a knowledge base that may not exist yet (the second key hashes its name).
BUILDER_LOCK_CLASS = 0x6B6272


class StoreConfig(BaseModel):
    """Where knowledge bases keep their truth: SQLite files in the data directory, or one PostgreSQL database.

    With `postgres`, every knowledge base, its vectors (pgvector), the ingestion queue and the uploaded
    originals live in the database at `dsn`, so several `kbqa serve` nodes and `kbqa worker` processes
    share them; see docs/deploy.md, "Several nodes on PostgreSQL".
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    backend: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="sqlite (files under data_dir, one node) or postgres (shared by several nodes)."
    )
    dsn: SecretStr | None = Field(
        None,
        description="PostgreSQL connection string, e.g. postgresql://kbqa:secret@db:5432/kbqa "
        "(Env: KBQA_STORE__DSN). The database needs the pgvector extension.",
    )
    pool_min: int = Field(1, ge=0, description="Connections each process keeps open to PostgreSQL.")
    pool_max: int = Field(10, ge=1, description="Most connections one process opens to PostgreSQL.")
    job_lease_s: float = Field(
        30.0,
        ge=1,
        description="How long a worker's claim on a running job lasts without a heartbeat (renewed every third "
        "of it): a job whose worker died is taken by another within about this long.",
    )
    connect_timeout_s: float = Field(
        5.0,
        gt=0,
        description="How long a request waits for a database connection before it fails with 503.",
    )

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> StoreConfig:
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError(
                "backend is postgres but no dsn is set (KBQA_STORE__DSN=postgresql://user:pw@host/db)"
            )
        return self

    def secret_dsn(self) -> str:
        """Return the DSN in clear; ValueError when the postgres backend has none."""
        if self.dsn is None:
            raise ValueError("store.backend is postgres but store.dsn is not set (KBQA_STORE__DSN)")
        return self.dsn.get_secret_value()


def where(dsn: str) -> str:
    """Return the host (or socket folder), port and database of a DSN, without its password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:  # a DSN psycopg cannot even parse is shown by its own error
        return "the configured database"
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"{host}{port}/{parts.get('dbname') or parts.get('user') or ''}"


class Database:
    """A pool of connections to the deployment's PostgreSQL, with kbqa's schema made current on first use.

    Opening never blocks: a node started while the database is down serves 503 until it is back, and
    a connection broken by a database restart is checked and replaced when next taken from the pool.
    """

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.dsn = config.secret_dsn()
        self.where = where(self.dsn)
        self._pool: ConnectionPool | None = None
        self._ready = False
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every connection of the pool; return nothing."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            self._ready = False

    def check(self) -> None:
        """Connect and make the schema current; raise DatabaseUnavailable or DatabaseError saying why not."""
        with self.connection() as conn:
            conn.execute("SELECT 1")

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """Yield a pooled connection inside one transaction (committed when the block ends, else rolled back).

        Losing the database (before or during the block) raises DatabaseUnavailable.
        """
        import psycopg
        import psycopg_pool

        try:
            pool = self._ensure_ready()
            try:
                conn = pool.getconn(timeout=self.config.connect_timeout_s)
            except psycopg_pool.PoolTimeout as error:
                if pool.get_stats().get("pool_size", 0) >= pool.max_size:  # all in use: busy, not broken
                    raise DatabaseUnavailable(self._unavailable("every connection is in use")) from None
                if (problem := self._last_problem()) is not None:
                    raise DatabaseUnavailable(self._unavailable(problem)) from None
                # The database answers, but the pool is still waiting out its back-off from when it did
                # not: a fresh pool serves at once, rather than in up to half a minute.
                pool = self._renew_pool(pool)
                try:
                    conn = pool.getconn(timeout=self.config.connect_timeout_s)
                except psycopg_pool.PoolTimeout:
                    raise DatabaseUnavailable(self._unavailable(str(error))) from None
            try:
                with conn:
                    yield conn
            finally:
                pool.putconn(conn)
        except psycopg.OperationalError as error:
            raise DatabaseUnavailable(self._unavailable(_first_line(error))) from None

    def _renew_pool(self, stale: ConnectionPool) -> ConnectionPool:
        """Return a new pool in place of `stale` (closed in the background, its connections handed back first)."""
        with self._lock:
            if self._pool is stale:
                self._pool = self._new_pool()
                threading.Thread(target=stale.close, kwargs={"timeout": 30}, daemon=True).start()
                log.warning("connection pool renewed after the database came back")
            return self._pool

    def _unavailable(self, reason: str) -> str:
        return f"the database ({self.where}) is unavailable: {reason}; try again shortly"

    def _last_problem(self) -> str | None:
        # The pool keeps trying in the background; one direct attempt says why it fails (wrong password,
        # no such database, refused) better than its timeout does.
        import psycopg

        try:
            psycopg.connect(self.dsn, connect_timeout=2).close()
        except psycopg.Error as error:
            return _first_line(error)
        return None

    def _ensure_ready(self) -> ConnectionPool:
        if self._ready and self._pool is not None:
            return self._pool
        with self._lock:
            if not self._ready:
                self._prepare()
                self._ready = True
            if self._pool is None:
                self._pool = self._new_pool()
            return self._pool

    def _new_pool(self) -> ConnectionPool:
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(
            self.dsn,
            min_size=self.config.pool_min,
            max_size=max(self.config.pool_max, self.config.pool_min),
            kwargs={"connect_timeout": max(1, int(self.config.connect_timeout_s))},
            configure=_configure,
            check=ConnectionPool.check_connection,  # a connection a restart broke is replaced, not handed out
            # A connection that cannot be made is retried with backoff for a minute, then on demand: the
            # nodes recover by themselves when the database is back, however long it was away.
            reconnect_timeout=60,
            open=False,
            name="kbqa",
        )
        pool.open(wait=False)
        return pool

    def _prepare(self) -> None:
        """Check pgvector and bring the schema to SCHEMA_VERSION, on a connection of its own."""
        import psycopg

        try:
            conn = psycopg.connect(self.dsn, connect_timeout=max(1, int(self.config.connect_timeout_s)))
        except psycopg.OperationalError as error:
            raise DatabaseUnavailable(self._unavailable(_first_line(error))) from None
        with conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
            try:
                self._create_extension(conn)
                conn.execute("CREATE TABLE IF NOT EXISTS kbqa_schema (version INTEGER NOT NULL)")
                row = conn.execute("SELECT version FROM kbqa_schema").fetchone()
                version = row[0] if row else 0
                if version > SCHEMA_VERSION:
                    raise DatabaseError(
                        f"the database ({self.where}) has kbqa schema version {version}, newer than this kbqa's "
                        f"({SCHEMA_VERSION}): upgrade kbqa on this node"
                    )
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    log.info("upgrading the database schema", extra={"version": number})
                    conn.execute(MIGRATIONS[number - 1])
                if row is None:
                    conn.execute("INSERT INTO kbqa_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
                elif version < SCHEMA_VERSION:
                    conn.execute("UPDATE kbqa_schema SET version = %s", (SCHEMA_VERSION,))
                conn.commit()
            finally:
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
                conn.commit()

    def _create_extension(self, conn: psycopg.Connection) -> None:
        import psycopg

        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
            return
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile):
            conn.rollback()
            raise DatabaseError(
                f"the database ({self.where}) has no pgvector extension: install it on the PostgreSQL server "
                "(Debian: postgresql-17-pgvector; or the pgvector/pgvector image)"
            ) from None
        except psycopg.errors.InsufficientPrivilege:
            conn.rollback()
            raise DatabaseError(
                f"the database ({self.where}) lacks the pgvector extension and this user may not create it: "
                "run CREATE EXTENSION vector as its owner"
            ) from None


def _configure(conn: psycopg.Connection) -> None:
    """Teach a new connection the vector type (numpy arrays in and out)."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    conn.commit()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_databases: dict[str, Database] = {}
_databases_lock = threading.Lock()


def shared_database(config: StoreConfig) -> Database:
    """Return this process's one Database for `config`'s DSN (one pool per process, whoever asks)."""
    dsn = config.secret_dsn()
    with _databases_lock:
        database = _databases.get(dsn)
        if database is None or database.config != config:
            database = _databases[dsn] = Database(config)
        return database
