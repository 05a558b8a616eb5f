"""The hook's spool folders: which spooled event files the drain would take, and when each arrived.

Its own module so that status, purge and any other reader list the spool the same way without
importing each other.
"""

from __future__ import annotations

import os
import stat
import time
from datetime import datetime, timezone
from pathlib import Path

from ccrl.agent.core.config import Settings
from ccrl.hooks.paths import SPOOL_SUFFIX, spool_received_at


def _own_directory(directory: Path) -> bool:
    """A real directory owned by this user: the /tmp spool dir is in a shared place, and a
    look-alike (another user's, or a symlink) is never read, as the drain never reads it."""
    try:
        st = directory.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def spool_files(settings: Settings) -> list[Path]:
    """Every spooled event the drain would take: complete ``*.event`` files, and unfinished
    ``.<name>.event.tmp`` ones old enough that no hook is still writing them (the hook was
    killed between write and rename), in every spool dir."""
    from ccrl.agent.capture.drain import STALE_TMP_S

    found: list[Path] = []
    now = time.time()
    for directory in dict.fromkeys(settings.spool_dirs):
        if not _own_directory(directory):
            continue
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            complete = name.endswith(SPOOL_SUFFIX) and not name.startswith(".")
            unfinished = name.startswith(".") and name.endswith(SPOOL_SUFFIX + ".tmp")
            if not (complete or unfinished):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (unfinished and now - st.st_mtime < STALE_TMP_S):
                continue
            found.append(Path(entry.path))
    return sorted(found)


def spool_time(path: Path) -> datetime:
    """When a spooled event arrived: the hook names files ``<unix µs>-<pid>-<rand>.event``;
    the file's mtime stands in for names in any other form."""
    received = spool_received_at(path.name)
    if received is None:
        received = path.stat().st_mtime
    return datetime.fromtimestamp(received, tz=timezone.utc)
