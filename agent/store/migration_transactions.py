"""How each migration is applied: in one transaction with its version record, holding the
store's write lock from the "already applied?" check to the commit.

SQLite: pysqlite emits no BEGIN before DDL, so a migration's ALTER and CREATE statements ran in
autocommit and a crash between two of them left half a migration applied ("duplicate column"
on every later start). SQLAlchemy's documented fix (pysqlite: "Serializable isolation /
Savepoints / Transactional DDL") turns the driver's transaction handling off
(``isolation_level = None``) and emits BEGIN from a ``begin`` listener; here BEGIN IMMEDIATE,
which takes the write lock before the check, so two processes never both see a migration
unapplied. Only the migrating connection is changed: the rest of the app keeps its transactions.
PostgreSQL: DDL is transactional; ``pg_advisory_xact_lock`` serialises migrators.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine

# pg_advisory_xact_lock's key for migrating (any constant; "ccrl" in ASCII).
PG_MIGRATE_LOCK = 0x6363726C
# How long a starting process waits for another one's migration (SQLite's busy timeout while
# migrating): a large store's data migration takes a while, and waiting is right.
SQLITE_LOCK_WAIT_MS = 300_000
# A test-only pause point: "<migration name>[:seconds]" makes the runner stop (sleep) right after
# that migration's first write, inside its transaction, and say so on stderr. The crash and race
# tests use it to kill a process, or start a second one, in the middle of a real migration.
PAUSE_ENV = "CCRL_TEST_PAUSE_IN_MIGRATION"
_WRITES = ("ALTER", "CREATE", "DROP", "INSERT", "UPDATE", "DELETE")


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose ``begin()`` (see :func:`locked_transaction`) really begins a
    transaction that holds the write lock; restored as it was before it goes back to the pool."""
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            yield conn
            return
        driver = conn.connection.driver_connection
        saved_isolation = driver.isolation_level
        saved_timeout = driver.execute("PRAGMA busy_timeout").fetchone()[0]
        driver.isolation_level = None
        driver.execute(f"PRAGMA busy_timeout = {max(int(saved_timeout), SQLITE_LOCK_WAIT_MS)}")
        event.listen(conn, "begin", _begin_immediate)
        try:
            yield conn
        finally:
            event.remove(conn, "begin", _begin_immediate)
            if conn.in_transaction():
                conn.rollback()
            driver.isolation_level = saved_isolation
            driver.execute(f"PRAGMA busy_timeout = {int(saved_timeout)}")


@contextmanager
def locked_transaction(conn: Connection) -> Iterator[None]:
    """One transaction on a :func:`migration_connection`, holding the migration lock from its
    first statement: committed when the block ends, rolled back when it raises."""
    with conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATE_LOCK})
        yield


@contextmanager
def pause_point(conn: Connection, name: str) -> Iterator[None]:
    """Around one migration's body: when ``PAUSE_ENV`` names it, sleep after its first write
    (the transaction open, the lock held). Does nothing otherwise."""
    target, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if target != name:
        yield
        return
    paused = False

    def after(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        nonlocal paused
        if paused or not statement.lstrip().upper().startswith(_WRITES):
            return
        paused = True
        print(f"ccrl: paused in migration {name} after its first write ({PAUSE_ENV})", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 3600))

    event.listen(conn, "after_cursor_execute", after)
    try:
        yield
    finally:
        event.remove(conn, "after_cursor_execute", after)
