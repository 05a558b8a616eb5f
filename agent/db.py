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

from ccrl.agent.config import Settings, get_settings
from ccrl.agent.migrations import migrate

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
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    migrate(engine)
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
