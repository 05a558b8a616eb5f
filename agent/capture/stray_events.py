"""Events the hook left where the agent never reads them, and moving them to where it does.

The hook writes to the inbox and spool of its ``CCRL_HOME``, else spools to
``$XDG_RUNTIME_DIR/ccrl-spool`` or ``$TMPDIR/ccrl-spool-<uid>`` (``hooks/paths.py``), each
resolved in Claude Code's environment, not the agent's. A hook command of an earlier version
(no ``CCRL_HOME``), a settings entry for another data directory, or a session started with
other XDG variables leaves events in places the agent's drain never visits. ``ccrl doctor``
reports them (``find_stray_events``); ``ccrl hooks collect`` moves them into the agent's own
spool folder (``collect_stray_events``), where the next ingest stores them (the drain skips
an event it already has, so a repeated move never duplicates one).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ccrl.agent.capture.claude_settings import SCOPES, scope_status, settings_path
from ccrl.agent.core.config import Settings
from ccrl.hooks import paths

# Where a session may have had its runtime and temp directories when the hook spooled there:
# systemd-logind's XDG_RUNTIME_DIR, and the hook's own fallback when TMPDIR is unset.
RUNTIME_DIRS = ("/run/user/{uid}",)
TEMP_DIRS = ("/tmp",)
_BATCH = 500


@dataclass
class StrayPlace:
    """One place holding events the agent does not read: an inbox file or a spool folder."""

    kind: str  # "inbox" or "spool"
    path: str
    events: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(str(path))))


def hook_homes(settings: Settings, project_dir: Path | None = None) -> list[str]:
    """Every data directory a hook may have written to, but the agent's own: those pinned by
    ccrl's entries in the settings files (user scope, and project/local of ``project_dir``),
    and the XDG defaults an entry without ``CCRL_HOME`` (legacy form) resolves to in another
    environment."""
    found = [os.path.join(os.path.expanduser("~"), ".local", "share", "ccrl")]
    if os.environ.get("XDG_DATA_HOME"):
        found.append(os.path.join(os.environ["XDG_DATA_HOME"], "ccrl"))
    for scope in SCOPES:
        found += [home for home in scope_status(scope, settings_path(scope, project_dir)).homes if home]
    own = _real(settings.home)
    return [home for home in dict.fromkeys(_real(h) for h in found) if home != own]


def stray_spool_dirs(settings: Settings, homes: list[str]) -> list[str]:
    """Spool folders a hook may have used that the agent's drain does not read."""
    uid = os.getuid()
    runtimes = [os.environ.get("XDG_RUNTIME_DIR") or ""] + [r.format(uid=uid) for r in RUNTIME_DIRS]
    temps = [os.environ.get("TMPDIR") or ""] + list(TEMP_DIRS)
    candidates = [os.path.join(home, paths.SPOOL_DIR) for home in homes]
    candidates += [paths.runtime_spool_dir(r) for r in runtimes if r]
    candidates += [paths.temp_spool_dir(t) for t in temps if t]
    # Compared resolved, returned as named: a folder that is a symlink must stay one that
    # ``_own_directory`` refuses (the hook and the drain refuse it too).
    seen = {_real(d) for d in settings.spool_dirs}
    found = []
    for candidate in candidates:
        if _real(candidate) not in seen:
            seen.add(_real(candidate))
            found.append(os.path.abspath(candidate))
    return found


def _own_directory(path: str) -> bool:
    """A real folder owned by this user (a shared /tmp may hold a look-alike: never touch it)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def _spool_events(directory: str) -> list[str]:
    """The complete spool files (``<µs>-<pid>-<rand>.event``) in ``directory``."""
    if not _own_directory(directory):
        return []
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(paths.SPOOL_SUFFIX) and not entry.name.startswith("."):
                if entry.is_file(follow_symlinks=False):
                    found.append(entry.path)
    return sorted(found)


def _inbox_rows(inbox: str) -> int:
    """Rows waiting in an inbox, read without changing (or creating) anything."""
    conn = sqlite3.connect(f"file:{quote(inbox)}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM inbox").fetchone()[0])
    finally:
        conn.close()


def find_stray_events(settings: Settings, project_dir: Path | None = None) -> list[StrayPlace]:
    """Every place outside the agent's reach that holds events (or cannot be read), by path."""
    homes = hook_homes(settings, project_dir)
    places = []
    for home in homes:
        inbox = paths.inbox_path(home)
        if not os.path.isfile(inbox):
            continue
        try:
            rows = _inbox_rows(inbox)
        except sqlite3.Error as exc:
            places.append(StrayPlace("inbox", inbox, 0, f"cannot read it: {exc}"))
            continue
        if rows:
            places.append(StrayPlace("inbox", inbox, rows))
    for directory in stray_spool_dirs(settings, homes):
        try:
            files = _spool_events(directory)
        except OSError as exc:
            places.append(StrayPlace("spool", directory, 0, f"cannot list it: {exc}"))
            continue
        if files:
            places.append(StrayPlace("spool", directory, len(files)))
    return places


# ---------------------------------------------------------------------------------------------
# Moving them


@dataclass
class CollectReport:
    """What ``collect_stray_events`` moved, and where to."""

    into: str
    moved: int = 0
    places: list[StrayPlace] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"into": self.into, "moved": self.moved, "places": [p.to_dict() for p in self.places],
                "errors": self.errors}


def _write_spool_file(directory: str, name: str, payload: bytes) -> None:
    """Write ``payload`` as ``directory/name``, durably, under a hidden name first (the drain
    never reads half an event)."""
    tmp = os.path.join(directory, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, os.path.join(directory, name))


def _move_spool_file(source: str, directory: str) -> None:
    from ccrl.agent.capture.drain import erase_file

    name = os.path.basename(source)
    target = os.path.join(directory, name)
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "a spool file of that name is already there", target)
    try:
        os.rename(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    with open(source, "rb") as handle:  # another file system: copy, then erase the original
        payload = handle.read()
    _write_spool_file(directory, name, payload)
    erase_file(Path(source))


def _move_inbox_rows(inbox: str, directory: str) -> int:
    """Each row of a stray inbox becomes a spool file in ``directory`` (named with its exact
    ``received_at``, so the drain gives it the same identity), then the row is deleted."""
    from ccrl.agent.capture.drain import truncate_wal
    from ccrl.hooks.inbox import connect, spool_name

    conn = connect(inbox)
    moved = 0
    try:
        while True:
            rows = conn.execute("SELECT id, received_at, payload FROM inbox ORDER BY id LIMIT ?", (_BATCH,)).fetchall()
            if not rows:
                break
            for _id, received_at, payload in rows:
                _write_spool_file(directory, spool_name(float(received_at)), bytes(payload))
            conn.execute(f"DELETE FROM inbox WHERE id IN ({','.join('?' * len(rows))})", [r[0] for r in rows])
            moved += len(rows)
        truncate_wal(conn)  # the moved payloads leave the WAL file too
    finally:
        conn.close()
    return moved


def collect_stray_events(settings: Settings, project_dir: Path | None = None) -> CollectReport:
    """Move every event ``find_stray_events`` reports into the agent's own spool folder."""
    from ccrl.agent.store.db import ensure_private_dir

    into = str(settings.spool_dirs[0])
    report = CollectReport(into=into)
    places = find_stray_events(settings, project_dir)
    if not places:
        return report
    ensure_private_dir(settings.home)
    ensure_private_dir(Path(into))
    for place in places:
        report.places.append(place)
        if place.error:
            report.errors.append(f"{place.path}: {place.error}; its events stay there")
            continue
        try:
            if place.kind == "inbox":
                report.moved += _move_inbox_rows(place.path, into)
                continue
            for source in _spool_events(place.path):
                _move_spool_file(source, into)
                report.moved += 1
        except (OSError, sqlite3.Error) as exc:
            report.errors.append(f"{place.path}: {exc}; what was not moved stays there")
    return report
