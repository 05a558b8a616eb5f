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

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text

from ccrl.agent.core.config import Settings

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
        from ccrl.agent.store.db import get_engine

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


# ---------------------------------------------------------------------------------------------
# Manual commands (`ccrl train`, `ccrl build-dataset`, `ccrl agent once`)


class TrainerLockError(RuntimeError):
    """A manual command could not take the trainer lock: the store cannot be reached."""


class TrainerLockBusy(TrainerLockError):
    """Another agent (or manual command) trains on this store now."""


def busy_message(settings: Settings) -> str:
    from ccrl.agent.core.secrets_display import mask_url

    return f"another training agent holds the lock on {mask_url(settings.db_url)}: stop it or wait"


POLL_S = 5.0


@contextmanager
def manual_trainer_lock(settings: Settings, *, wait: bool = False, poll_s: float = POLL_S) -> Iterator[TrainerLock | None]:
    """Hold the trainer lock for a manual command that numbers datasets, runs or cycles, so it
    cannot race the training agent of a shared store (the pipeline lock only keeps one
    machine's processes apart). Without ``wait`` a held lock raises :class:`TrainerLockBusy`;
    with it the command waits, polling. A local SQLite store has no other machine's agent:
    nothing is taken (yields None)."""
    from ccrl.agent.store.remote import is_remote, unreachable

    if not is_remote(settings):
        yield None
        return
    lock = TrainerLock(settings)

    def take() -> bool:
        try:
            return lock.hold()
        except Exception as exc:
            if not unreachable(exc):
                raise
            from ccrl.agent.core.secrets_display import mask_url, scrub_password

            detail = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
            raise TrainerLockError(scrub_password(f"cannot reach the store {mask_url(settings.db_url)} to take "
                                                  f"the trainer lock: {detail}", settings.db_url)) from None

    if not take():
        if not wait:
            raise TrainerLockBusy(busy_message(settings))
        print(f"ccrl: {busy_message(settings)}; waiting for it…", file=sys.stderr, flush=True)
        while not take():
            time.sleep(poll_s)
    try:
        yield lock
    finally:
        lock.release()
