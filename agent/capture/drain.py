"""The drain: captured events from the inbox and the spool files into the store.

The hook (``ccrl.hooks``) appends each event's raw stdin to the inbox, or to a spool file when
the inbox cannot take it. :func:`drain` moves both into the store:

- a JSON object with a ``hook_event_name`` becomes a ``HookEvent`` row, keyed by
  :func:`event_key` (a hash of the exact ``received_at`` and payload), so re-delivering an
  event, or meeting the same event in the inbox and in a spool file, stores it once;
- anything else becomes a ``Quarantine`` row with the reason (empty, not UTF-8, invalid JSON
  at byte N, not an object, no hook_event_name), so nothing is dropped silently;
- an event whose ``cwd`` has opted out since it was captured (``.ccrl-ignore``) is dropped.

Crash safety: an inbox row or spool file is deleted only after the store transaction that
holds it has committed. A crash in between re-delivers it next time, which the key turns into
a no-op: at-least-once delivery plus idempotent storing is exactly-once. What is drained leaves
no bytes behind (it may hold what the hook's rules missed): inbox rows are deleted under
``secure_delete`` and the WAL truncated after, spool files are zeroed before they are deleted.

Work is done in batches (by rows and by bytes), so a huge inbox never sits in memory at once,
and the inbox is only write-locked for the short DELETE of each batch, so hooks keep writing
while the drain runs. A row or file that cannot be used is quarantined, and one that cannot
even be read is reported and left in place: neither ever blocks the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from ccrl.agent.capture.deep_redact import redact_bytes, redact_obj
from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.store import origin
from ccrl.agent.store.db import ensure_private_dir, get_engine
from ccrl.agent.store.models import HookEvent, Quarantine
from ccrl.hooks import inbox as hook_inbox
from ccrl.hooks import paths
from ccrl.hooks.handler import REDACTION_FAILED

BATCH_ROWS = 500
BATCH_BYTES = 32 * 1024 * 1024
# The drain may wait longer than a hook for the inbox lock: it is not on a user's critical path.
INBOX_BUSY_TIMEOUT_S = 10.0
# A hidden ``.<name>.tmp`` spool file this old is a write the hook never finished (it was
# killed between writing and renaming): it is drained like any other, and most likely
# quarantined as truncated.
STALE_TMP_S = 600.0
# The ids copied from a payload into HookEvent columns.
ID_FIELDS = ("session_id", "tool_use_id", "prompt_id", "agent_id")

_HOOK_EVENTS = HookEvent.__table__  # type: ignore[attr-defined]
_QUARANTINE = Quarantine.__table__  # type: ignore[attr-defined]


@dataclass
class DrainReport:
    """What one :func:`drain` did. Every input read is counted in exactly one of
    ``stored``, ``duplicates``, ``quarantined`` and ``ignored``."""

    stored: int = 0  # new HookEvent rows
    duplicates: int = 0  # events already stored (re-delivery, or inbox and spool copies)
    quarantined: int = 0  # inputs kept in Quarantine with a reason
    ignored: int = 0  # events whose cwd opted out (.ccrl-ignore) since capture: dropped
    from_inbox: int = 0  # inbox rows read
    from_spool: int = 0  # spool files read (stale temporary files included)
    left: int = 0  # inputs that could not be read and stay where they are
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # what went wrong and where; never raised

    @property
    def read(self) -> int:
        """Inputs read from the inbox and the spool."""
        return self.from_inbox + self.from_spool

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json`` output and the ingest report)."""
        return asdict(self)


@dataclass
class _Input:
    """One captured input: an inbox row (``ref`` = row id) or a spool file (``ref`` = path)."""

    source: str  # "inbox" or "spool"
    ref: int | Path
    received_at: float
    payload: bytes
    note: str = ""  # prefixed to a quarantine reason (e.g. an unfinished spool write)


def event_key(received_at: float, payload: bytes) -> str:
    """The identity of a captured event: sha256 of the exact ``received_at`` and payload."""
    digest = hashlib.sha256(repr(float(received_at)).encode("ascii"))
    digest.update(b"\n")
    digest.update(payload)
    return digest.hexdigest()


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def parse_event(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """``(event, None)`` for a usable hook event, else ``(None, reason)``."""
    if payload.startswith(REDACTION_FAILED):
        return None, payload[1:].decode("utf-8", "replace")
    if not payload.strip():
        return None, "empty: the hook received nothing on stdin" if not payload else \
            "empty: only whitespace on stdin"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8: byte 0x{payload[exc.start]:02x} at byte {exc.start}"
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        at = len(text[: exc.pos].encode("utf-8", "surrogatepass"))
        return None, f"invalid JSON at byte {at} (line {exc.lineno}, column {exc.colno}): {exc.msg}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply to parse"
    if not isinstance(event, dict):
        return None, f"not a JSON object: the payload is {_JSON_KINDS.get(type(event), type(event).__name__)}"
    name = event.get("hook_event_name")
    if name is None:
        return None, "missing hook_event_name: a JSON object, but not a hook event"
    if not isinstance(name, str) or not name.strip():
        return None, f"missing hook_event_name: it is {json.dumps(name)[:80]}, not an event name"
    return event, None


def _text_id(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _as_datetime(received_at: float) -> datetime:
    """Aware UTC, as the store's datetime columns take it."""
    try:
        return datetime.fromtimestamp(received_at, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return datetime.now(timezone.utc)


_REASON_KINDS = ("unfinished spool write", "empty", "not UTF-8", "invalid JSON", "not a JSON object",
                 "missing hook_event_name", "store rejected the event", "ccrl: redaction failed")


def _reason_kind(reason: str) -> str:
    """The reason's category, for the report's counts (``invalid JSON``, ``not UTF-8`` ...)."""
    return next((kind for kind in _REASON_KINDS if reason.startswith(kind)), reason.split(":", 1)[0])


# --------------------------------------------------------------------------------------------
# Storing


def _insert_ignoring_duplicate(conn: Connection, values: dict[str, Any]) -> bool:
    """INSERT a HookEvent row unless its event_key is stored already. True when inserted."""
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        stmt = dialect_insert(_HOOK_EVENTS).values(**values).on_conflict_do_nothing(
            index_elements=["event_key"])
        if dialect == "postgresql":
            # The PostgreSQL dialect adds RETURNING to an insert, and then reports no rowcount
            # (-1): the returned row says whether one was inserted.
            return conn.execute(stmt.returning(_HOOK_EVENTS.c.id)).first() is not None
        return conn.execute(stmt).rowcount == 1
    exists = conn.execute(
        select(_HOOK_EVENTS.c.id).where(_HOOK_EVENTS.c.event_key == values["event_key"])
    ).first()
    if exists:
        return False
    conn.execute(insert(_HOOK_EVENTS).values(**values))
    return True


def _insert_quarantine(conn: Connection, item: _Input, reason: str) -> bool:
    """INSERT a Quarantine row unless the same input is quarantined already (re-delivery)."""
    received = _as_datetime(item.received_at)
    payload = redact_bytes(item.payload)
    exists = conn.execute(
        select(_QUARANTINE.c.id).where(
            _QUARANTINE.c.received_at == received,
            _QUARANTINE.c.reason == reason,
            _QUARANTINE.c.payload == payload,
        )
    ).first()
    if exists:
        return False
    conn.execute(insert(_QUARANTINE).values(received_at=received, source=item.source,
                                            reason=reason, payload=payload, **origin.stamp()))
    return True


def _insert_events(conn: Connection, rows: list[dict[str, Any]], report: DrainReport) -> None:
    """INSERT a batch's HookEvent rows in as few statements as the driver allows (multi-row
    VALUES with ``ON CONFLICT DO NOTHING RETURNING``), counting what was new and what was stored
    already. One statement per event cost a round trip each: on a store across the network
    (forwarding) that, not parsing or redaction, was most of the drain's time."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        for values in rows:
            if _insert_ignoring_duplicate(conn, values):
                report.stored += 1
            else:
                report.duplicates += 1
        return
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    stmt = dialect_insert(_HOOK_EVENTS).on_conflict_do_nothing(index_elements=["event_key"])
    inserted = len(conn.execute(stmt.returning(_HOOK_EVENTS.c.event_key), rows).all())
    report.stored += inserted
    report.duplicates += len(rows) - inserted


def _store_one(conn: Connection, item: _Input, report: DrainReport, seen: set[str],
               pending: list[dict[str, Any]] | None = None) -> None:
    """Store one input as a HookEvent or a Quarantine row (or drop it: opted out). With
    ``pending`` a HookEvent row is added there, for :func:`_insert_events`, instead."""
    event, reason = parse_event(item.payload)
    if event is None:
        reason = f"{item.note}{reason}"
        if _insert_quarantine(conn, item, reason):
            _count_quarantined(report, reason)
        else:
            report.duplicates += 1
        return
    cwd = event.get("cwd")
    if isinstance(cwd, str) and cwd and paths.ignored_path(cwd):
        report.ignored += 1
        return
    key = event_key(item.received_at, item.payload)
    if key in seen:
        report.duplicates += 1
        return
    seen.add(key)
    try:
        # The hook redacted the raw payload already; this applies today's rules once more,
        # and detect-secrets' detectors (ccrl.agent.capture.deep_redact) for what those rules miss.
        payload = redact_obj(event)
    except RecursionError:
        payload = event  # nested deeper than this walk goes: the hook's redaction stands
    values = {
        "event_key": key,
        "received_at": _as_datetime(item.received_at),
        "event": event["hook_event_name"],
        "payload": payload,
    }
    values.update({name: _text_id(event.get(name)) for name in ID_FIELDS})
    values.update(origin.stamp())  # who and which machine: a shared store holds a whole team's
    if pending is not None:
        pending.append(values)
    elif _insert_ignoring_duplicate(conn, values):
        report.stored += 1
    else:
        report.duplicates += 1


def _count_quarantined(report: DrainReport, reason: str) -> None:
    report.quarantined += 1
    kind = _reason_kind(reason)
    report.quarantine_reasons[kind] = report.quarantine_reasons.get(kind, 0) + 1


def _store_batch(engine: Engine, items: list[_Input], report: DrainReport) -> None:
    """Store a batch in one transaction. If the store rejects one input's data, retry the batch
    one input per transaction and quarantine the input the store will not take. A store that
    cannot be written at all (locked, disk full: OperationalError) raises."""
    counters = ("stored", "duplicates", "quarantined", "ignored")
    before = {name: getattr(report, name) for name in counters}
    reasons_before = dict(report.quarantine_reasons)
    try:
        with engine.begin() as conn:
            seen: set[str] = set()
            pending: list[dict[str, Any]] = []
            for item in items:
                _store_one(conn, item, report, seen, pending)
            _insert_events(conn, pending, report)
        return
    except (OperationalError, InterfaceError):
        raise
    except SQLAlchemyError:
        for name, value in before.items():  # rolled back: recounted one by one below
            setattr(report, name, value)
        report.quarantine_reasons = reasons_before
    for item in items:
        try:
            with engine.begin() as conn:
                _store_one(conn, item, report, set())
        except (OperationalError, InterfaceError):
            raise
        except SQLAlchemyError as exc:
            reason = f"store rejected the event: {getattr(exc, 'orig', None) or exc}"[:2000]
            with engine.begin() as conn:
                if _insert_quarantine(conn, item, reason):
                    _count_quarantined(report, reason)
                else:
                    report.duplicates += 1


# --------------------------------------------------------------------------------------------
# The inbox


def _inbox_batches(conn: sqlite3.Connection, max_id: int, rows: int, size: int) -> Iterator[list[_Input]]:
    """Inbox rows with ``id <= max_id`` in id order, in batches of at most ``rows`` rows and
    about ``size`` bytes (a single larger row is a batch of its own)."""
    last_id = 0
    while last_id < max_id:
        batch: list[_Input] = []
        total = 0
        cur = conn.execute(
            "SELECT id, received_at, payload FROM inbox WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
            (last_id, max_id, rows),
        )
        try:
            for row_id, received_at, payload in cur:
                if isinstance(payload, str):  # written by something other than the hook
                    payload = payload.encode("utf-8", "surrogatepass")
                note = ""
                try:
                    received = float(received_at)
                except (TypeError, ValueError):
                    received, note = time.time(), f"inbox row {row_id} had no valid received_at; "
                batch.append(_Input("inbox", int(row_id), received, bytes(payload or b""), note))
                total += len(payload or b"")
                if total >= size:
                    break
        finally:
            cur.close()
        if not batch:
            return
        last_id = int(batch[-1].ref)  # type: ignore[arg-type]
        yield batch


def _drain_inbox(engine: Engine, inbox_path: Path, report: DrainReport, rows: int, size: int) -> None:
    if not inbox_path.is_file():
        return
    try:
        conn = hook_inbox.connect(str(inbox_path), timeout=INBOX_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        report.errors.append(f"cannot open the inbox {inbox_path}: {exc}; its events stay there")
        return
    deleted_all = True
    try:
        # Rows written while the drain runs are left for the next drain, so it always ends.
        max_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM inbox").fetchone()[0]
        for batch in _inbox_batches(conn, max_id, rows, size):
            report.from_inbox += len(batch)
            _store_batch(engine, batch, report)
            ids = [item.ref for item in batch]
            try:
                conn.execute(f"DELETE FROM inbox WHERE id IN ({','.join('?' * len(ids))})", ids)
            except sqlite3.Error as exc:
                # Stored but not deleted: the next drain meets them again as duplicates.
                deleted_all = False
                report.errors.append(f"stored {len(ids)} inbox rows but could not delete them: {exc}")
        truncate_wal(conn)
    except sqlite3.Error as exc:
        report.errors.append(f"cannot read the inbox {inbox_path}: {exc}; its events stay there")
        return
    finally:
        conn.close()
    if deleted_all:
        # The inbox takes writes again: hooks that saw it locked need not spool any more.
        try:
            os.unlink(paths.busy_mark_path(str(inbox_path.parent)))
        except OSError:
            pass


def truncate_wal(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database file and truncate it to zero bytes. The WAL still holds
    every page image written since the last truncation, the rows just deleted included (with
    whatever a hook's older rules let through): secure_delete zeroes them in the database file,
    this takes them out of the WAL. True when done; a reader in the way (a hook, a purge) makes
    it a no-op until the next drain."""
    try:
        # A TRUNCATE checkpoint holds hooks' writes off while it waits for readers: wait only
        # as briefly as a hook's own checkpoint does, so no hook meets its busy timeout.
        conn.execute(f"PRAGMA busy_timeout={int(hook_inbox.CHECKPOINT_WAIT_S * 1000)}")
        try:
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(INBOX_BUSY_TIMEOUT_S * 1000)}")
        return busy == 0
    except sqlite3.Error:
        return False  # housekeeping: the next drain catches up


# --------------------------------------------------------------------------------------------
# The spool


def _spool_entries(directory: Path, report: DrainReport) -> list[tuple[float, Path, bool]]:
    """``(received_at, path, unfinished)`` of the spool files in ``directory``."""
    try:
        st = directory.lstat()
    except FileNotFoundError:
        return []
    except OSError as exc:
        report.errors.append(f"cannot read the spool directory {directory}: {exc}")
        return []
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        # A look-alike in a shared directory (another user's, or a symlink): never read it.
        report.errors.append(f"skipped {directory}: not a directory owned by this user")
        return []
    found = []
    now = time.time()
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                unfinished = name.startswith(".") and name.endswith(paths.SPOOL_SUFFIX + ".tmp")
                if not (unfinished or (name.endswith(paths.SPOOL_SUFFIX) and not name.startswith("."))):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if unfinished and now - mtime < STALE_TMP_S:
                    continue  # a hook may be writing it right now
                received = paths.spool_received_at(name)
                found.append((mtime if received is None else received, Path(entry.path), unfinished))
    except OSError as exc:
        report.errors.append(f"cannot list the spool directory {directory}: {exc}")
    return found


def _read_spool_file(path: Path) -> bytes:
    """The file's bytes; refuses symlinks and anything but a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def erase_file(path: Path) -> None:
    """Overwrite a regular file's bytes with zeros, then delete it: a drained spool file may hold
    what the hook's rules missed, and an unlinked file's blocks keep it until reused. (A
    copy-on-write or log-structured file system may still keep old blocks; the data directory
    on such a file system is as private as its mode.) Raises FileNotFoundError when it is gone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        os.unlink(path)  # not writable (or a link): deleting is all that can be done
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            left = os.fstat(fd).st_size
            zeros = bytes(min(left, 1 << 20))
            while left > 0:
                left -= os.write(fd, zeros[:left])
            os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)


def _drain_spool(engine: Engine, dirs: list[Path], report: DrainReport, rows: int, size: int) -> None:
    entries: list[tuple[float, Path, bool]] = []
    for directory in dict.fromkeys(dirs):  # the same directory named twice is read once
        entries.extend(_spool_entries(directory, report))
    entries.sort(key=lambda entry: (entry[0], entry[1].name))
    batch: list[_Input] = []
    total = 0

    def flush() -> None:
        nonlocal batch, total
        if not batch:
            return
        _store_batch(engine, batch, report)
        for item in batch:
            try:
                erase_file(item.ref)  # type: ignore[arg-type]
            except FileNotFoundError:
                pass  # another drain took it: stored once all the same
            except OSError as exc:
                report.errors.append(f"stored {item.ref} but could not delete it: {exc}")
        batch, total = [], 0

    for received_at, path, unfinished in entries:
        try:
            payload = _read_spool_file(path)
        except FileNotFoundError:
            continue  # drained meanwhile by another drain
        except OSError as exc:
            report.left += 1
            report.errors.append(f"cannot read the spool file {path}: {exc}; it stays there")
            continue
        note = "unfinished spool write (the hook was stopped while writing it); " if unfinished else ""
        batch.append(_Input("spool", path, received_at, payload, note))
        report.from_spool += 1
        total += len(payload)
        if len(batch) >= rows or total >= size:
            flush()
    flush()


# --------------------------------------------------------------------------------------------
# Public entry points


def ensure_local_stores(settings: Settings | None = None) -> Path:
    """Create the data directory (0700), its spool directory (0700) and the inbox (0600, WAL)
    if missing, and return the inbox's path. Idempotent; ``ccrl hooks install`` calls it."""
    settings = settings or get_settings()
    ensure_private_dir(settings.home)
    ensure_private_dir(settings.spool_dirs[0])
    hook_inbox.ensure_inbox(str(settings.inbox_path))
    return settings.inbox_path


def drain(settings: Settings | None = None, batch_rows: int = BATCH_ROWS,
          batch_bytes: int = BATCH_BYTES) -> DrainReport:
    """Move every captured input from the inbox and every spool directory into the store.

    Problems with the inbox or the spool (unreadable, locked, not ours) are reported in
    ``errors`` and leave their inputs in place for the next drain. A failure of the store
    itself (it cannot be opened or written) raises: nothing has been deleted then.
    """
    settings = settings or get_settings()
    report = DrainReport()
    engine = get_engine(settings)
    try:
        ensure_local_stores(settings)
    except (OSError, sqlite3.Error) as exc:
        report.errors.append(f"cannot set up the inbox {settings.inbox_path}: {exc}")
    _drain_inbox(engine, settings.inbox_path, report, batch_rows, batch_bytes)
    _drain_spool(engine, list(settings.spool_dirs), report, batch_rows, batch_bytes)
    return report
