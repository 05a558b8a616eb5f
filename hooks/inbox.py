"""The inbox: a local SQLite file the hook appends raw events to. Standard library only.

The hook only ever INSERTs; ``ccrl ingest`` reads rows, turns them into sessions, traces and
tool calls, and deletes the rows it has stored. The inbox is always a local SQLite file, even
when the store is PostgreSQL, so the hook never waits on a network.
"""

from __future__ import annotations

import os
import sqlite3

SCHEMA_VERSION = 1

# received_at: unix time the hook ran. payload: stdin exactly as received, after redaction
# (bytes: it may not be valid JSON or even UTF-8; ingest decides and quarantines with a reason).
SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    payload BLOB NOT NULL
);
"""

INSERT_SQL = "INSERT INTO inbox (received_at, payload) VALUES (?, ?)"


def connect(path: str, timeout: float = 5.0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def ensure_inbox(path: str) -> None:
    """Create the inbox file (mode 0600, WAL) and its table if missing. Idempotent."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.chmod(path + suffix, 0o600)
