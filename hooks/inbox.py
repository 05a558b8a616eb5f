"""Where an event lands: the inbox, else a spool file. Standard library only.

The inbox is a local SQLite file the hook appends raw events to. The hook only ever INSERTs;
the drain (``ccrl.agent.capture.drain``) reads rows, stores them as hook events, and deletes the rows
once that store transaction has committed. The inbox is always a local SQLite file, even when
the store is PostgreSQL, so the hook never waits on a network.

When the inbox cannot take an event (locked past the busy timeout, read-only, disk full, file
or schema missing), the event goes to a spool file in the first spool directory that accepts
it (see ``paths.spool_dirs``); the drain reads those too.
"""

import os

if __package__:
    from . import paths
else:  # imported by hooks/capture.py run by path
    import paths

SCHEMA_VERSION = 1

# received_at: unix time the hook ran (a float; with the payload it identifies the event, so a
# re-delivered event is recognised). payload: stdin exactly as received, after redaction
# (bytes: it may not be valid JSON or even UTF-8; the drain decides and quarantines with a reason).
SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    payload BLOB NOT NULL
);
"""

INSERT_SQL = "INSERT INTO inbox (received_at, payload) VALUES (?, ?)"

# How long the hook waits for another writer (the drain deleting a batch, another hook).
HOOK_BUSY_TIMEOUT_S = 2.0
# After the inbox stayed locked past that timeout, hooks spool without waiting for this long.
BUSY_BACKOFF_S = 30.0
# The hook checkpoints and truncates the WAL once it is this big (see ``append``), waiting at
# most CHECKPOINT_WAIT_S for readers (the drain) to let it.
WAL_TRUNCATE_BYTES = 256 * 1024
CHECKPOINT_WAIT_S = 0.1

# Connections the hook leaves open on purpose (see ``append``).
_kept_open: list = []


def _sqlite():
    # The C module alone: ``sqlite3`` also imports datetime for adapters the hook never uses
    # (about 1.3 ms of a ~15 ms hook). Same ``connect`` and exceptions.
    try:
        import _sqlite3 as sqlite
    except ImportError:  # pragma: no cover - every CPython build with sqlite3 has it
        import sqlite3 as sqlite
    return sqlite


def _uri(path: str, mode: str) -> str:
    """A ``file:`` URI for ``path``; ``mode=rw`` opens an existing file and never creates one."""
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode={mode}"


def append(path: str, received_at: float, payload: bytes, timeout: float = HOOK_BUSY_TIMEOUT_S,
           keep_open: bool = False) -> None:
    """Insert one event into the inbox at ``path``. Raises on any failure; the caller spools.

    Never creates the file: a missing inbox means ccrl is not set up (or its data was removed),
    and the spool keeps the event until it is. ``synchronous=NORMAL`` in WAL mode commits
    without an fsync: an event survives the hook process dying, not a power cut.

    ``keep_open`` (the hook, which leaves with ``os._exit`` right after): closing the last
    connection makes SQLite checkpoint, with two fsyncs, on every single event; under disk
    load that is tens of milliseconds. Leaving it open is safe (the commit is in the WAL, and
    the next connection reads it back), but then nothing ever resets the WAL: each hook would
    re-read a WAL that keeps growing. So the hook truncates the WAL itself once it passes
    ``WAL_TRUNCATE_BYTES``: one hook in a few dozen pays the fsyncs, the others read a small WAL.
    """
    conn = _sqlite().connect(_uri(path, "rw"), uri=True, timeout=timeout, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(INSERT_SQL, (received_at, payload))
    except BaseException:
        conn.close()
        raise
    if not keep_open:
        conn.close()
        return
    _kept_open.append(conn)
    try:
        if os.stat(path + "-wal").st_size > WAL_TRUNCATE_BYTES:
            # The event is committed; this is housekeeping, so wait only briefly for readers.
            conn.execute(f"PRAGMA busy_timeout={int(CHECKPOINT_WAIT_S * 1000)}")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except Exception:
        pass  # the next hook tries again


def _recently_locked(home: str, now: float) -> bool:
    try:
        # 0 <= age: a mark from the future (the clock was set back) is no reason to keep spooling.
        return 0 <= now - os.stat(paths.busy_mark_path(home)).st_mtime < BUSY_BACKOFF_S
    except OSError:
        return False


def _mark_locked(home: str) -> None:
    mark = paths.busy_mark_path(home)
    try:
        os.close(os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        os.utime(mark)
    except OSError:
        pass


def store(home: str, received_at: float, payload: bytes, keep_open: bool = False) -> None:
    """Append the event to ``home``'s inbox, waiting at most the busy timeout for the lock.

    Raises on failure. A lock that outlasts the timeout also marks the inbox busy, so the next
    hooks spool at once instead of each stalling a tool call for the whole timeout (a drain
    clears the mark; it also expires after ``BUSY_BACKOFF_S``).
    """
    if _recently_locked(home, received_at):
        raise TimeoutError("the inbox was locked moments ago")
    try:
        append(paths.inbox_path(home), received_at, payload, keep_open=keep_open)
    except Exception as exc:
        message = str(exc).lower()
        if "locked" in message or "busy" in message:
            _mark_locked(home)
        raise


def _makedirs_private(directory: str) -> None:
    """``os.makedirs`` that creates every missing level 0700 (makedirs gives only the last
    level its mode: a data dir created on the way to its spool dir would be world-readable)."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent and parent != directory:
        _makedirs_private(parent)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass


def _private_dir(directory: str) -> bool:
    """Create ``directory`` (0700) if needed; True when it is a real directory owned by us and
    closed to others (a shared /tmp may hold a look-alike planted by another user)."""
    try:
        _makedirs_private(directory)
        st = os.lstat(directory)
    except OSError:
        return False
    if not (st.st_mode & 0o170000 == 0o040000 and st.st_uid == os.getuid()):
        return False
    if st.st_mode & 0o077:
        try:
            os.chmod(directory, 0o700)
        except OSError:
            return False
    return True


def _raise_file_size_limit() -> bool:
    """Lift this process's soft RLIMIT_FSIZE to its hard limit (never above). True if changed."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft == hard:
            return False
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        return True
    except (ImportError, OSError, ValueError):
        return False


def spool_name(received_at: float) -> str:
    """A unique spool file name, ``<unix µs>-<pid>-<random>.event``.

    The hook takes ``received_at`` as whole microseconds divided by 10**6, so the µs in the
    name give back exactly the same float (``paths.spool_received_at``): an event that reached
    both the inbox and a spool file has one identity.
    """
    micros = round(received_at * 1_000_000)
    return f"{micros}-{os.getpid()}-{os.urandom(4).hex()}{paths.SPOOL_SUFFIX}"


def spool(home: str, received_at: float, payload: bytes) -> str | None:
    """Write the event to the first spool directory that takes it. Returns the file's path,
    or None when no directory would (the event is lost: nothing on this machine is writable).

    Written under a hidden temporary name (0600) and renamed, so the drain never reads half an
    event. A spool directory is created 0700 and used only if it is ours.
    """
    name = spool_name(received_at)
    for attempt in range(2):
        for directory in paths.spool_dirs(home):
            if not _private_dir(directory):
                continue
            tmp = os.path.join(directory, "." + name + ".tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                final = os.path.join(directory, name)
                os.rename(tmp, final)
                return final
            except OSError:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        # Every directory refused. If a lowered soft file-size limit is why (ulimit -S -f),
        # lift it to the hard limit (that binds this process only) and try once more.
        if attempt or not _raise_file_size_limit():
            break
    return None


def connect(path: str, timeout: float = 5.0):
    """A connection to an existing inbox for the drain (autocommit; never creates the file)."""
    import sqlite3

    conn = sqlite3.connect(_uri(path, "rw"), uri=True, timeout=timeout, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    # A deleted row's bytes are zeroed, not left in free pages: an event that still held a
    # secret the hook's rules missed must not outlive the row that the drain deletes.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def ensure_inbox(path: str) -> None:
    """Create the inbox file (mode 0600, WAL) and its table if missing. Idempotent."""
    import sqlite3

    _makedirs_private(os.path.dirname(path))
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA secure_delete=ON")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.chmod(path + suffix, 0o600)
