"""Where ccrl keeps its data. Standard library only: the hook imports this on its hot path.

The hook learns the data directory from its environment alone (``CCRL_HOME``, else the XDG
default); it never parses a config file. ``ccrl hooks install`` always writes the absolute
``CCRL_HOME`` into the hook command itself, so hook and agent always agree.
"""

import os

INBOX_FILE = "inbox.db"
SPOOL_DIR = "spool"
SPOOL_SUFFIX = ".event"
# Touched by the hook when the inbox stayed locked past its busy timeout; while it is fresh,
# later hooks spool at once instead of each waiting for the lock again.
BUSY_MARK_FILE = "inbox.busy"
# A repository (or any directory) holding this file is never captured, nor anything below it.
IGNORE_FILE = ".ccrl-ignore"


def default_home() -> str:
    """The data directory when ``CCRL_HOME`` is not set: ``$XDG_DATA_HOME/ccrl`` or
    ``~/.local/share/ccrl``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if not xdg:
        xdg = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(os.path.abspath(xdg), "ccrl")


def data_home() -> str:
    """The data directory: ``$CCRL_HOME``, else ``$XDG_DATA_HOME/ccrl``, else ``~/.local/share/ccrl``."""
    home = os.environ.get("CCRL_HOME")
    if home:
        return os.path.abspath(os.path.expanduser(home))
    return default_home()


def inbox_path(home: str | None = None) -> str:
    """The local SQLite file the hook appends events to (always SQLite, whatever the store)."""
    return os.path.join(home or data_home(), INBOX_FILE)


def busy_mark_path(home: str | None = None) -> str:
    """The marker file that says "the inbox was locked recently: spool without waiting"."""
    return os.path.join(home or data_home(), BUSY_MARK_FILE)


def spool_received_at(name: str) -> float | None:
    """The ``received_at`` of a spool file named ``<unix µs>-<pid>-<random>.event`` (or its
    in-flight ``.<name>.tmp``), exactly as the hook had it; None for any other name."""
    head = name.lstrip(".").split("-", 1)[0]
    if not (head.isascii() and head.isdigit()):
        return None
    return int(head) / 1_000_000


def spool_dirs(home: str | None = None) -> list[str]:
    """Where events go when the inbox cannot be written, in order of preference.

    The first lives in the data directory; the others are for when the data directory itself
    cannot be written (read-only, full disk): the per-user runtime directory, then a per-user
    folder in the temp directory. The hook writes to the first that works; the drain reads
    them all.
    """
    home = home or data_home()
    dirs = [os.path.join(home, SPOOL_DIR)]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(runtime_spool_dir(runtime))
    dirs.append(temp_spool_dir(os.environ.get("TMPDIR") or "/tmp"))
    return dirs


def runtime_spool_dir(runtime: str) -> str:
    """The spool directory in a per-user runtime directory (``$XDG_RUNTIME_DIR``)."""
    return os.path.join(os.path.abspath(runtime), "ccrl-spool")


def temp_spool_dir(tmp: str) -> str:
    """This user's spool directory in a temp directory (``$TMPDIR``, else ``/tmp``)."""
    return os.path.join(os.path.abspath(tmp), f"ccrl-spool-{os.getuid()}")


def ignored_path(path: str) -> bool:
    """True when ``path`` or one of its parents holds a ``.ccrl-ignore`` file (opt-out).

    Used by the hook (on the event's ``cwd``), by the drain and by ``ccrl import`` (on a
    transcript's cwd). Costs one ``stat`` per directory level.
    """
    try:
        path = os.path.abspath(path)
    except (OSError, ValueError):
        return False
    while True:
        if os.path.exists(os.path.join(path, IGNORE_FILE)):
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
