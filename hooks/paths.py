"""Where ccrl keeps its data. Standard library only: the hook imports this on its hot path.

The hook learns the data directory from its environment alone (``CCRL_HOME``, else the XDG
default); it never parses a config file. ``ccrl hooks install`` writes a non-default
``CCRL_HOME`` into the hook command itself, so hook and agent always agree.
"""

from __future__ import annotations

import os

INBOX_FILE = "inbox.db"
SPOOL_DIR = "spool"


def data_home() -> str:
    """The data directory: ``$CCRL_HOME``, else ``$XDG_DATA_HOME/ccrl``, else ``~/.local/share/ccrl``."""
    home = os.environ.get("CCRL_HOME")
    if home:
        return os.path.abspath(os.path.expanduser(home))
    xdg = os.environ.get("XDG_DATA_HOME")
    if not xdg:
        xdg = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "ccrl")


def inbox_path(home: str | None = None) -> str:
    """The local SQLite file the hook appends events to (always SQLite, whatever the store)."""
    return os.path.join(home or data_home(), INBOX_FILE)


def spool_dirs(home: str | None = None) -> list[str]:
    """Where events go when the inbox cannot be written, in order of preference.

    The first lives in the data directory; the others are for when the data directory itself
    cannot be written (read-only, full disk): the per-user runtime directory, then a per-user
    folder in the temp directory.
    """
    home = home or data_home()
    dirs = [os.path.join(home, SPOOL_DIR)]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(os.path.join(runtime, "ccrl-spool"))
    tmp = os.environ.get("TMPDIR") or "/tmp"
    dirs.append(os.path.join(tmp, f"ccrl-spool-{os.getuid()}"))
    return dirs
