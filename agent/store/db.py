"""The store's engine and sessions. SQLite by default (one file, mode 0600, WAL); any
SQLAlchemy URL works through ``CCRL_DATABASE_URL``."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session as DBSession
from sqlmodel import create_engine

from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.store.migrations import migrate

_engines: dict[str, Engine] = {}
# One creation per URL even when threads ask at once (the agent's jobs start together): a second
# creation would open and close the database file while the first engine's connections hold
# SQLite's POSIX locks, and closing any descriptor of a file drops the process's locks on it.
_engines_lock = threading.Lock()


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700; tighten it if it already exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    return path


def ensure_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing, and tighten it if it exists."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _sqlite_file(url: str) -> Path | None:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///"):])
    return None


# How long opening a connection to a database server may take: a laptop off the network must
# not stall the agent's jobs (the hook never opens the store at all).
CONNECT_TIMEOUT_S = 10


def _server_options(url: str) -> dict:
    """Engine arguments for a database server (PostgreSQL). Sessions run in UTC, so that SQL
    written without a zone reads the stored instants as UTC, as on SQLite. TCP keepalives find
    a connection whose server vanished without a word (a laptop leaving the network) in about a
    minute, instead of the system's two hours, so the agent's ingest job fails and retries
    rather than hanging."""
    if url.startswith(("postgresql", "postgres")):
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S, "options": "-c timezone=UTC",
                                 "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                                 "keepalives_count": 3}}
    return {}


def _psycopg_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
    """PostgreSQL's text types cannot hold NUL (U+0000), which SQLite stores and which tool
    outputs and payloads may carry: on PostgreSQL a NUL in a text value is written as U+FFFD
    (the replacement character) instead of failing the whole transaction. JSON columns are not
    affected (JSON escapes it as ``\\u0000``)."""
    from psycopg.adapt import Dumper, PyFormat

    adapters = dbapi_conn.adapters
    bases = [adapters.get_dumper(str, fmt) for fmt in (PyFormat.BINARY, PyFormat.AUTO)]
    for base in bases:  # the AUTO one last: it stays the default for str

        class NulSafe(Dumper):
            format = base.format
            inner_class = base

            def __init__(self, cls, context=None):  # noqa: ANN001
                super().__init__(cls, context)
                self.inner = self.inner_class(cls, context)
                self.oid = self.inner.oid

            def dump(self, obj):  # noqa: ANN001
                if "\x00" in obj:
                    obj = obj.replace("\x00", "\ufffd")
                return self.inner.dump(obj)

        adapters.register_dumper(str, NulSafe)


def get_engine(settings: Settings | None = None) -> Engine:
    """The engine for the configured store, created (and migrated) on first use."""
    settings = settings or get_settings()
    url = settings.db_url
    if url in _engines:
        return _engines[url]
    with _engines_lock:
        if url in _engines:
            return _engines[url]
        return _create_engine(settings, url)


def _create_engine(settings: Settings, url: str) -> Engine:
    ensure_private_dir(settings.home)
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        ensure_private_dir(sqlite_file.parent)
        ensure_private_file(sqlite_file)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # Deleted or rewritten text is zeroed, not left in free pages (purge, re-redaction).
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, **_server_options(url))
        if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
            event.listen(engine, "connect", _psycopg_connect)
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()  # unreachable or refused: the next call starts afresh
        raise
    if sqlite_file is not None:
        # WAL side files are created by SQLite with the umask; keep them private too.
        for suffix in ("-wal", "-shm"):
            side = Path(str(sqlite_file) + suffix)
            if side.exists():
                os.chmod(side, 0o600)
    _engines[url] = engine
    return engine


def dispose_engines() -> None:
    """Close every cached engine (tests switch data directories between cases)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[DBSession]:
    """A session that commits on success and rolls back on error."""
    with DBSession(get_engine(settings)) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
