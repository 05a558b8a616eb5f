"""Locks shared by the agent and the manual commands, as ``flock(2)`` on files in ``CCRL_HOME``.

- The **pipeline lock** (``pipeline.lock``) is held by whoever is changing models right now:
  the agent while it advances a cycle, or a manual ``ccrl train`` / ``export`` / ``deploy``. A
  second holder either waits or is refused with a message naming the first (the lock file holds
  a JSON description of the holder, written after the lock is taken). ``flock`` locks vanish
  with their process, so a crash or ``kill -9`` never leaves a stale lock behind.
- The **agent lock** (``agent.lock``) is held by ``ccrl agent run`` for its whole life: only one
  agent per data directory, and ``ccrl status`` can tell whether one is running.

A child process that runs a cycle step inherits the pipeline lock's file descriptor (see
``child.py``) and the ``CCRL_PIPELINE_LOCK_FD`` variable: the lock then stays held until both
parent and child are gone, and the child's own ``acquire`` calls are no-ops instead of waiting
for its parent forever.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

INHERITED_FD_ENV = "CCRL_PIPELINE_LOCK_FD"


class LockBusy(RuntimeError):
    """The lock is held by someone else (see ``holder``)."""

    def __init__(self, lock_name: str, holder: dict[str, Any] | None) -> None:
        self.lock_name = lock_name
        self.holder = holder or {}
        super().__init__(busy_message(self.holder))


def busy_message(holder: dict[str, Any]) -> str:
    """A sentence saying who holds the pipeline, for CLI errors and logs."""
    if not holder:
        return "another ccrl process is training, exporting or deploying right now"
    what = holder.get("what") or "a ccrl command"
    pid = holder.get("pid")
    since = holder.get("since")
    who = "the agent" if holder.get("agent") else "another ccrl command"
    details = ", ".join(x for x in (f"pid {pid}" if pid else "", f"since {since}" if since else "") if x)
    return f"{who} is busy with {what}" + (f" ({details})" if details else "")


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass
class FileLock:
    """An exclusive ``flock`` on ``path`` that records who holds it.

    Re-entrant within one object (nested ``acquire`` calls count), and inheritable by a child
    process through ``INHERITED_FD_ENV`` (pipeline lock only).
    """

    path: Path
    name: str = "pipeline"
    inheritable: bool = False

    def __post_init__(self) -> None:
        self._fd: int | None = None
        self._depth = 0

    @property
    def fd(self) -> int | None:
        """The open descriptor while held (to pass to a child process)."""
        return self._fd

    def _inherited(self) -> bool:
        """True when our parent holds this lock and passed its descriptor to us."""
        if not self.inheritable:
            return False
        raw = os.environ.get(INHERITED_FD_ENV)
        if not raw:
            return False
        try:
            fd = int(raw)
            st = os.fstat(fd)
            mine = os.stat(self.path)
        except (ValueError, OSError):
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def acquire(self, what: str, *, wait: bool = False, timeout: float | None = None,
                agent: bool = False, poll: float = 0.2, **info: Any) -> None:
        """Take the lock for ``what`` (e.g. ``"cycle 3: sft"``).

        ``wait=False`` raises ``LockBusy`` at once when someone else holds it; ``wait=True``
        waits (up to ``timeout`` seconds, None = forever) and then raises ``LockBusy``.
        """
        if self._depth or self._inherited():
            self._depth += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    holder = self.holder()
                    os.close(fd)
                    raise LockBusy(self.name, holder) from None
                time.sleep(poll)
        record = {"what": what, "pid": os.getpid(), "since": _now(), "agent": agent,
                  "argv": sys.argv[:6], **info}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        self._depth = 1

    def update(self, what: str, **info: Any) -> None:
        """Change the description while holding the lock (e.g. the cycle moved to a new step)."""
        if self._fd is None:
            return
        record = self._read(self._fd) or {}
        record.update(what=what, **info)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)

    def release(self) -> None:
        """Give the lock back (the outermost release of nested acquires does)."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth or self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._depth > 0

    @staticmethod
    def _read(fd: int) -> dict[str, Any] | None:
        try:
            raw = os.pread(fd, 65536, 0)
            return json.loads(raw) if raw.strip() else None
        except (OSError, ValueError):
            return None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (their record), or None when nobody does."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read(fd) or {}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @contextmanager
    def hold(self, what: str, **kwargs: Any) -> Iterator[FileLock]:
        """``with lock.hold("ccrl train --phase sft", wait=True): ...``"""
        self.acquire(what, **kwargs)
        try:
            yield self
        finally:
            self.release()


def _home(home: Path | None) -> Path:
    if home is not None:
        return Path(home)
    from ccrl.agent.core.config import get_settings

    return get_settings().home


def pipeline_lock(home: Path | None = None) -> FileLock:
    """The lock every model-changing operation takes (agent cycle steps, train, export, deploy)."""
    return FileLock(_home(home) / "pipeline.lock", name="pipeline", inheritable=True)


def agent_lock(home: Path | None = None) -> FileLock:
    """The lock a running agent (``ccrl agent run``) holds for its whole life."""
    return FileLock(_home(home) / "agent.lock", name="agent")


@contextmanager
def manual_command(what: str, *, wait: bool, timeout: float | None = None,
                   home: Path | None = None) -> Iterator[FileLock]:
    """For ``ccrl train/export/deploy``: hold the pipeline lock for the command, or explain.

    With ``wait`` a busy pipeline prints one line on stderr and waits; without it ``LockBusy``
    propagates (its message says who is busy), and the CLI turns it into a clear refusal.
    """
    lock = pipeline_lock(home)
    try:
        lock.acquire(what, wait=False)
    except LockBusy as busy:
        if not wait:
            raise
        print(f"ccrl: {busy}; waiting for it to finish…", file=sys.stderr, flush=True)
        lock.acquire(what, wait=True, timeout=timeout)
    try:
        yield lock
    finally:
        lock.release()
