"""One training agent per shared store.

The pipeline lock (``lock.pipeline_lock``) is a file in ``CCRL_HOME``: it keeps the agent and
the manual commands of one machine apart, not two machines. On a store a team shares, every
agent whose role trains (``all``, the default, or ``trainer``) would start its own cycles on
the pooled traces, numbering them, their datasets and models against each other. So on a
database server the agent only checks thresholds and trains while it holds a PostgreSQL
session-level advisory lock, on a connection of its own kept for as long as it trains: the first
training agent to start trains, the others only capture (and say so in their state), and one
of them takes over at its next cycle check when the trainer stops or loses its connection.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import text

from ccrl.agent.config import Settings

# pg_try_advisory_lock's key for "trains on this store" ("ccrt" in ASCII).
TRAINER_LOCK_KEY = 0x63637274


class TrainerLock:
    """Held by at most one agent per PostgreSQL store at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: Any = None
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._conn is not None

    def hold(self) -> bool:
        """True when this agent holds the lock: still (its connection answers) or newly taken.
        False when another agent holds it. Raises when the store cannot be reached."""
        from ccrl.agent.db import get_engine

        with self._mutex:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT 1"))
                    self._conn.commit()
                    return True
                except Exception:  # noqa: BLE001 - connection lost: so is the lock; try again below
                    self._close()
            conn = get_engine(self.settings).connect()
            try:
                got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                        {"key": TRAINER_LOCK_KEY}).scalar())
                conn.commit()
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._conn = conn
            return True

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": TRAINER_LOCK_KEY})
                    self._conn.commit()
                except Exception:  # noqa: BLE001 - closing the connection releases it anyway
                    pass
                self._close()

    def _close(self) -> None:
        try:
            self._conn.invalidate()  # never back into the pool: a session lock may linger on it
            self._conn.close()
        except Exception:  # noqa: BLE001
            pass
        self._conn = None
