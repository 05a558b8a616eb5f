"""``ccrl-hook``: the one command Claude Code runs for every hook event.

Contract with Claude Code (see ../shared/docs/claude-code.md): exit 0, print nothing, never
block, never lose an event. Plain stdout on UserPromptSubmit/SessionStart would be added to
Claude's context, and exit 2 would block the session, so this module never writes to stdout or
stderr and always leaves with status 0.

Hot path, standard library only: read stdin, honour opt-out, redact, INSERT one row into the
inbox (a local SQLite file in ``CCRL_HOME``). If that fails for any reason (locked, read-only,
disk full, schema missing) the event is written to a spool file instead, in the first spool
directory that accepts it; ``ccrl ingest`` picks spooled events up later.
"""

from __future__ import annotations

import os
import sys
import time

from ccrl.hooks import paths
from ccrl.hooks.inbox import INSERT_SQL
from ccrl.hooks.redact import redact_bytes

IGNORE_FILE = ".ccrl-ignore"
DISABLE_VALUES = ("1", "true", "yes", "on")
BUSY_TIMEOUT_S = 2.0


def _read_stdin() -> bytes:
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return b""
        return sys.stdin.buffer.read()
    except Exception:
        return b""


def _json_string_field(data: bytes, name: bytes) -> str | None:
    """The value of a top-level string field, without importing json (costs start-up time).

    Only used for ``cwd``; anything unusual returns None and the full parser decides later.
    """
    at = data.find(b'"' + name + b'"')
    if at < 0:
        return None
    i = at + len(name) + 2
    n = len(data)
    while i < n and data[i] in b" \t\r\n":
        i += 1
    if i >= n or data[i] != 0x3A:  # ':'
        return None
    i += 1
    while i < n and data[i] in b" \t\r\n":
        i += 1
    if i >= n or data[i] != 0x22:  # '"'
        return None
    end = data.find(b'"', i + 1)
    raw = data[i + 1 : end] if end > 0 else b""
    if b"\\" in raw:
        import json

        try:
            obj = json.loads(data)
            value = obj.get(name.decode()) if isinstance(obj, dict) else None
            return value if isinstance(value, str) else None
        except Exception:
            return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def opted_out(data: bytes) -> bool:
    """True when capture is disabled: ``CCRL_DISABLE`` set, or a ``.ccrl-ignore`` file in the
    session's directory or any directory above it."""
    if os.environ.get("CCRL_DISABLE", "").strip().lower() in DISABLE_VALUES:
        return True
    cwd = _json_string_field(data, b"cwd")
    return bool(cwd) and ignored_path(cwd)


def ignored_path(path: str) -> bool:
    """True when ``path`` or one of its parents holds a ``.ccrl-ignore`` file."""
    path = os.path.abspath(path)
    while True:
        if os.path.exists(os.path.join(path, IGNORE_FILE)):
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def store_inbox(home: str, received_at: float, payload: bytes) -> None:
    import sqlite3

    path = paths.inbox_path(home)
    if not os.path.exists(path):
        # Never create the store from the hook: a missing inbox means ccrl was not set up
        # (or the data dir was removed); the spool keeps the event until it is.
        raise FileNotFoundError(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(INSERT_SQL, (received_at, payload))
    finally:
        conn.close()


def spool(home: str, received_at: float, payload: bytes) -> str | None:
    """Write the event to the first spool directory that takes it. Returns the file's path."""
    name = f"{int(received_at * 1_000_000)}-{os.getpid()}-{os.urandom(4).hex()}.event"
    for directory in paths.spool_dirs(home):
        tmp = os.path.join(directory, "." + name + ".tmp")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)
            # Rename last, so ingest never reads a half-written event.
            os.rename(tmp, os.path.join(directory, name))
            return os.path.join(directory, name)
        except Exception:
            try:
                os.unlink(tmp)
            except Exception:
                pass
    return None


def capture(payload: bytes, home: str | None = None) -> str:
    """Store one event. Returns where it went: 'inbox', 'spool', 'ignored' or 'lost'."""
    if opted_out(payload):
        return "ignored"
    received_at = time.time()
    home = home or paths.data_home()
    try:
        payload = redact_bytes(payload)
    except Exception:
        pass
    try:
        store_inbox(home, received_at, payload)
        return "inbox"
    except Exception:
        pass
    return "spool" if spool(home, received_at, payload) else "lost"


def main() -> None:
    try:
        # Nothing this process prints may reach Claude Code.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    except Exception:
        pass
    try:
        capture(_read_stdin())
    except BaseException:
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
