"""``ccrl purge``: delete captured data for good.

What counts as captured data: sessions, traces (subagent traces with their parents), tool
calls, raw hook events, quarantined input, and events not ingested yet (inbox rows, spool
files). Purging works in two steps so the CLI can show what will go before anything does:
``plan_purge`` finds it (reading payloads of not-yet-ingested and quarantined events for their
``session_id`` and ``cwd``, from the raw bytes when a payload is truncated or malformed:
``payload_ids``), ``execute_purge`` deletes exactly that, then VACUUMs the SQLite files and
truncates their write-ahead logs, so the deleted text no longer sits in free pages on disk.
Its result says what remains (``purge_residue``: what PostgreSQL cannot reclaim, Claude Code's
own transcripts, quarantined input that names nobody).

Modes:
- ``session``: one session and everything that belongs to it.
- ``project``: every session whose cwd is the path or below it (the session's own path, a
  trace's cwd, or the cwd of any of its events), and everything of those sessions.
- ``before``: everything captured before a moment: traces that started before it (with their
  subagent traces), sessions left without traces that started before it, hook events,
  quarantined input and pending events that arrived before it.
- ``all``: everything.

On a store a team shares (a database server, ``CCRL_DATABASE_URL``), every mode covers only
the member's own data: rows whose ``user_name`` is this member's (``origin.member()``), from
any of their machines. Other members' rows, and rows stored before origins were recorded
(``user_name`` unknown), are never touched. Pending events are local, hence always one's own.
A local SQLite store is one person's: it is purged whole, as before.

Purging holds the ingest lock, and afterwards tells ingest's bookkeeping
(``ingest-state.json``) to stop watching purged sessions' transcripts. Datasets built from the
store afterwards no longer contain purged data; what was built from it before (dataset
versions, models, Ollama tags, evaluations) is found and removed by ``purge_derived``. Claude
Code's own transcripts (``~/.claude/projects``) are not ccrl's to delete; the tombstones keep
``ccrl import`` and ingest from bringing purged turns back.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ccrl.agent.capture.spool import spool_files, spool_time
from ccrl.agent.core.config import Settings

MODES = ("session", "project", "before", "all")
_CHUNK = 500  # ids per IN (…) clause, well under SQLite's bound-parameter limit


class PurgeError(Exception):
    """A purge request that cannot be carried out as asked (bad date, bad path…)."""


@dataclass(frozen=True)
class PurgeTarget:
    """What to purge: exactly one mode with its argument."""

    mode: str
    session_id: str | None = None
    project: str | None = None
    before: datetime | None = None  # aware, UTC

    def describe(self) -> str:
        text = self._describe()
        member = _shared_store_member()
        if text and member:
            return f"{text}, of member {member} only (the store is shared: other members' data stays)"
        return text

    def _describe(self) -> str:
        if self.mode == "session":
            return f"everything of session {self.session_id}"
        if self.mode == "project":
            return f"everything captured in {self.project} or below it"
        if self.mode == "before":
            return f"everything captured before {self.before.isoformat()}" if self.before else ""
        return "all captured data"


def _shared_store_member() -> str | None:
    """This member's name when the configured store is shared (a database server), else None."""
    try:
        from ccrl.agent.core.config import get_settings
        from ccrl.agent.store.origin import member
        from ccrl.agent.store.remote import is_remote

        return member() if is_remote(get_settings()) else None
    except Exception:  # noqa: BLE001 - a description never fails; an invalid config is reported elsewhere
        return None


@dataclass
class PurgePlan:
    """Exactly what a purge will delete."""

    target: PurgeTarget
    session_ids: set[str] = field(default_factory=set)
    trace_ids: set[int] = field(default_factory=set)
    tool_calls: int = 0
    hook_event_ids: set[int] = field(default_factory=set)
    quarantine_ids: set[int] = field(default_factory=set)
    inbox_ids: set[int] = field(default_factory=set)
    spool_files: list[Path] = field(default_factory=list)
    # Not deleted, reported: quarantined input that names no session, folder or transcript
    # (e.g. a payload whose redaction failed), and Claude Code's own transcripts of the sessions.
    unattributed_quarantine: int = 0
    transcripts: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "sessions": len(self.session_ids),
            "traces": len(self.trace_ids),
            "tool_calls": self.tool_calls,
            "hook_events": len(self.hook_event_ids),
            "quarantined": len(self.quarantine_ids),
            "inbox_events": len(self.inbox_ids),
            "spool_files": len(self.spool_files),
        }

    @property
    def empty(self) -> bool:
        return not any(self.counts().values())


# ---------------------------------------------------------------------------------------------
# Arguments


def parse_before(text: str) -> datetime:
    """``--before`` as an aware UTC datetime. Accepts an ISO date (``2026-01-31``: local midnight) or date
    and time (``2026-01-31T12:00``, local time unless it carries an offset or ``Z``)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise PurgeError(
            f"--before {text!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]."
        ) from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the user's local time
    return moment.astimezone(timezone.utc)


def normalize_project(path: str) -> list[str]:
    """The forms a project path may have been recorded under: as given (absolute) and with
    symlinks resolved."""
    given = os.path.normpath(os.path.abspath(os.path.expanduser(path)))
    resolved = os.path.realpath(given)
    return sorted({given, resolved})


def is_under(path: Any, roots: list[str]) -> bool:
    """True when ``path`` is one of ``roots`` or below one of them (component-wise: /a/bc is
    not below /a/b)."""
    if not isinstance(path, str) or not path:
        return False
    path = os.path.normpath(path)
    for root in roots:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return True
    return False


def _payload_ids(payload: bytes | str | dict[str, Any] | None) -> tuple[str | None, str | None]:
    """``(session_id, cwd)`` of a payload, read from the raw bytes when it does not parse (a
    truncated or otherwise quarantined event still says whose it is)."""
    from ccrl.agent.store.payload_ids import payload_ids

    return payload_ids(payload)


def _names_session(source: str | None, sessions: set[str]) -> bool:
    """True when a quarantine ``source`` is one of the sessions' transcripts: Claude Code names
    them ``…/<session-id>.jsonl`` and ``…/<session-id>/subagents/agent-….jsonl``. (A corrupt
    transcript line cannot be parsed for its ``sessionId``; its file still says whose it is.)"""
    if not source or not sessions:
        return False
    return any(part in sessions or part.removesuffix(".jsonl") in sessions for part in Path(source).parts)


def _chunks(ids: Iterable[Any], size: int = _CHUNK) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in ids:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------
# Pending events (inbox, spool): read without the store


@dataclass
class _Pending:
    """One not-yet-ingested event, reduced to what membership needs."""

    ref: Any  # inbox row id or spool file path
    received_at: datetime  # aware, UTC
    session_id: str | None
    cwd: str | None


def _open_inbox(path: Path) -> sqlite3.Connection:
    """An autocommit connection to the existing inbox (``mode=rw`` never creates the file)."""
    return sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=30, isolation_level=None)


def _inbox_rows(settings: Settings) -> list[_Pending]:
    inbox = settings.inbox_path
    if not inbox.exists():
        return []
    conn = _open_inbox(inbox)
    try:
        rows = conn.execute("SELECT id, received_at, payload FROM inbox").fetchall()
    finally:
        conn.close()
    found = []
    for row_id, received_at, payload in rows:
        when = datetime.fromtimestamp(float(received_at), tz=timezone.utc)
        found.append(_Pending(row_id, when, *_payload_ids(payload)))
    return found


def _spooled(settings: Settings) -> list[_Pending]:
    found = []
    for path in spool_files(settings):
        try:
            payload = path.read_bytes()
            when = spool_time(path)
        except OSError:
            continue  # taken by a concurrent ingest
        found.append(_Pending(path, when, *_payload_ids(payload)))
    return found


# ---------------------------------------------------------------------------------------------
# Planning


def _descendants(db: Any, trace_ids: set[int]) -> set[int]:
    """``trace_ids`` plus every trace whose parent chain leads into it (subagent traces)."""
    from sqlmodel import select

    from ccrl.agent.store.models import Trace

    result = set(trace_ids)
    frontier = set(trace_ids)
    while frontier:
        children: set[int] = set()
        for chunk in _chunks(frontier):
            children.update(db.exec(select(Trace.id).where(Trace.parent_id.in_(chunk))).all())
        frontier = children - result
        result |= frontier
    return result


def _plan_all(db: Any, plan: PurgePlan, pending: list[_Pending]) -> list[_Pending]:
    from sqlmodel import select

    from ccrl.agent.store.models import HookEvent, Quarantine, Session, Trace

    plan.session_ids = set(db.exec(select(Session.id)).all())
    plan.trace_ids = set(db.exec(select(Trace.id)).all())
    plan.hook_event_ids = set(db.exec(select(HookEvent.id)).all())
    plan.quarantine_ids = set(db.exec(select(Quarantine.id)).all())
    return pending


def _plan_before(db: Any, plan: PurgePlan, pending: list[_Pending], cutoff: datetime) -> list[_Pending]:
    from sqlalchemy import func
    from sqlmodel import select

    from ccrl.agent.store.models import HookEvent, Quarantine, Session, Trace

    started = func.coalesce(Trace.started_at, Trace.created_at)
    plan.trace_ids = _descendants(db, set(db.exec(select(Trace.id).where(started < cutoff)).all()))
    # A session goes when it started before the cutoff and none of its traces stay.
    kept_sessions = {sid for tid, sid in db.exec(select(Trace.id, Trace.session_id)).all() if tid not in plan.trace_ids}
    began = func.coalesce(Session.started_at, Session.created_at)
    plan.session_ids = set(db.exec(select(Session.id).where(began < cutoff)).all()) - kept_sessions
    plan.hook_event_ids = set(db.exec(select(HookEvent.id).where(HookEvent.received_at < cutoff)).all())
    plan.quarantine_ids = set(db.exec(select(Quarantine.id).where(Quarantine.received_at < cutoff)).all())
    return [p for p in pending if p.received_at < cutoff]


def _sessions_under(db: Any, plan: PurgePlan, roots: list[str], pending: list[_Pending]) -> set[str]:
    """Sessions whose cwd is a root or below: the session's path, a trace's cwd, or the cwd of
    any of its events (stored, quarantined, in the inbox or spooled). Stored events under a
    root that name no session go into the plan directly."""
    from sqlmodel import select

    from ccrl.agent.store.models import HookEvent, Quarantine, Session, Trace

    sessions = {sid for sid, path in db.exec(select(Session.id, Session.project_path)).all() if is_under(path, roots)}
    sessions |= {sid for sid, cwd in db.exec(select(Trace.session_id, Trace.cwd)).all() if is_under(cwd, roots)}
    for row_id, sid, payload in db.exec(select(HookEvent.id, HookEvent.session_id, HookEvent.payload)).yield_per(1000):
        if is_under(_payload_ids(payload)[1], roots):
            if sid:
                sessions.add(sid)
            else:
                plan.hook_event_ids.add(row_id)
    for payload in db.exec(select(Quarantine.payload)).yield_per(1000):
        sid, cwd = _payload_ids(payload)
        if sid and is_under(cwd, roots):
            sessions.add(sid)
    sessions |= {p.session_id for p in pending if p.session_id and is_under(p.cwd, roots)}
    return sessions


def _plan_sessions(db: Any, plan: PurgePlan, pending: list[_Pending], sessions: set[str],
                   roots: list[str]) -> list[_Pending]:
    """Everything of ``sessions``; pending events and quarantined items also by their cwd."""
    from sqlmodel import select

    from ccrl.agent.store.models import HookEvent, Quarantine, Session, Trace

    traces: set[int] = set()
    for chunk in _chunks(sessions):
        plan.session_ids.update(db.exec(select(Session.id).where(Session.id.in_(chunk))).all())
        traces.update(db.exec(select(Trace.id).where(Trace.session_id.in_(chunk))).all())
        plan.hook_event_ids.update(db.exec(select(HookEvent.id).where(HookEvent.session_id.in_(chunk))).all())
    plan.trace_ids = _descendants(db, traces)

    def belongs(session_id: str | None, cwd: Any) -> bool:
        return (session_id is not None and session_id in sessions) or is_under(cwd, roots)

    quarantined = select(Quarantine.id, Quarantine.source, Quarantine.payload)
    for row_id, source, payload in db.exec(quarantined).yield_per(1000):
        session_id, cwd = _payload_ids(payload)
        if _names_session(source, sessions) or belongs(session_id, cwd):
            plan.quarantine_ids.add(row_id)
        elif session_id is None and cwd is None and not str(source).endswith(".jsonl"):
            plan.unattributed_quarantine += 1  # says neither whose nor where: reported as left
    return [p for p in pending if belongs(p.session_id, p.cwd)]


def _only_member(db: Any, plan: PurgePlan, name: str) -> None:
    """Narrow the plan to ``name``'s rows (a shared store holds the whole team's)."""
    from sqlmodel import select

    from ccrl.agent.store.models import HookEvent, Quarantine, Session, Trace

    def own(model: Any, key: Any, ids: set[Any]) -> set[Any]:
        kept: set[Any] = set()
        for chunk in _chunks(ids):
            kept.update(db.exec(select(key).where(key.in_(chunk), model.user_name == name)).all())
        return kept

    plan.session_ids = own(Session, Session.id, plan.session_ids)
    plan.trace_ids = own(Trace, Trace.id, plan.trace_ids)
    plan.hook_event_ids = own(HookEvent, HookEvent.id, plan.hook_event_ids)
    plan.quarantine_ids = own(Quarantine, Quarantine.id, plan.quarantine_ids)


def _transcripts(db: Any, plan: PurgePlan) -> list[str]:
    """Claude Code's own transcripts of the sessions the plan touches, still on this machine."""
    from sqlmodel import select

    from ccrl.agent.store.models import Session, Trace

    touched = set(plan.session_ids)
    for chunk in _chunks(plan.trace_ids):
        touched.update(db.exec(select(Trace.session_id).where(Trace.id.in_(chunk))).all())
    found: set[str] = set()
    for chunk in _chunks(touched):
        for path in db.exec(select(Session.transcript_path).where(Session.id.in_(chunk))).all():
            if path and Path(path).is_file():
                found.add(path)
    return sorted(found)


def plan_purge(settings: Settings, target: PurgeTarget) -> PurgePlan:
    """Find everything ``target`` covers, changing nothing."""
    from sqlalchemy import func
    from sqlmodel import Session as DBSession
    from sqlmodel import select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import ToolCall

    if target.mode not in MODES:
        raise PurgeError(f"unknown purge mode {target.mode!r}")
    plan = PurgePlan(target=target)
    pending = _inbox_rows(settings) + _spooled(settings)
    with DBSession(get_engine(settings)) as db:
        if target.mode == "all":
            selected = _plan_all(db, plan, pending)
        elif target.mode == "before":
            if target.before is None:
                raise PurgeError("--before needs a date")
            selected = _plan_before(db, plan, pending, target.before)
        elif target.mode == "session":
            sessions = {target.session_id} if target.session_id else set()
            selected = _plan_sessions(db, plan, pending, sessions, [])
        else:
            if not target.project:
                raise PurgeError("--project needs a path")
            roots = normalize_project(target.project)
            selected = _plan_sessions(db, plan, pending, _sessions_under(db, plan, roots, pending), roots)
        from ccrl.agent.store.remote import is_remote

        if is_remote(settings):
            from ccrl.agent.store.origin import member

            _only_member(db, plan, member())
        for chunk in _chunks(plan.trace_ids):
            plan.tool_calls += db.exec(
                select(func.count()).select_from(ToolCall).where(ToolCall.trace_id.in_(chunk))
            ).one()
        plan.transcripts = _transcripts(db, plan)
    plan.inbox_ids = {p.ref for p in selected if not isinstance(p.ref, Path)}
    plan.spool_files = sorted(p.ref for p in selected if isinstance(p.ref, Path))
    return plan


# ---------------------------------------------------------------------------------------------
# Deleting


@dataclass
class PurgeResult:
    """What a purge removed, whether the SQLite files were compacted afterwards, and what of
    the purged data still exists elsewhere (``remains``: one sentence each)."""

    removed: dict[str, int]
    vacuumed: list[str]
    notes: list[str]
    store: dict[str, Any] = field(default_factory=dict)
    remains: list[str] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)


def _record_tombstones(settings: Settings, plan: PurgePlan) -> None:
    """Remember what was purged, so ingest and import never bring it back from Claude Code's
    own transcripts (which ccrl does not delete) or from a session that is still running.

    Sessions deleted whole get a tombstone without a date. Sessions a ``--before`` purge only
    thinned (they have later turns) get the cut-off: turns that started before it stay gone.
    """
    from sqlmodel import select

    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import PurgedSession, Trace

    with session_scope(settings) as db:
        partial: set[str] = set()
        for chunk in _chunks(plan.trace_ids):
            partial.update(db.exec(select(Trace.session_id).where(Trace.id.in_(chunk))).all())
        cutoff = plan.target.before if plan.target.mode == "before" else None
        tombstones = {sid: None for sid in plan.session_ids}
        for sid in partial - plan.session_ids:
            tombstones[sid] = cutoff
        for sid, before in tombstones.items():
            existing = db.get(PurgedSession, sid)
            if existing is None:
                db.add(PurgedSession(session_id=sid, before=before))
            elif existing.before is not None and (before is None or before > existing.before):
                existing.before = before
                db.add(existing)


def _delete_store_rows(settings: Settings, plan: PurgePlan) -> None:
    from sqlalchemy import delete, update

    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import HookEvent, Quarantine, Session, ToolCall, Trace

    with session_scope(settings) as db:
        for chunk in _chunks(plan.trace_ids):
            db.exec(delete(ToolCall).where(ToolCall.trace_id.in_(chunk)))
        # Unlink parents first: chunks may split a parent from its subagent traces, and the
        # foreign key would refuse to delete a parent that a surviving row still points to.
        for chunk in _chunks(plan.trace_ids):
            db.exec(update(Trace).where(Trace.id.in_(chunk)).values(parent_id=None))
        for chunk in _chunks(plan.trace_ids):
            db.exec(delete(Trace).where(Trace.id.in_(chunk)))
        for chunk in _chunks(plan.session_ids):
            db.exec(delete(Session).where(Session.id.in_(chunk)))
        for chunk in _chunks(plan.hook_event_ids):
            db.exec(delete(HookEvent).where(HookEvent.id.in_(chunk)))
        for chunk in _chunks(plan.quarantine_ids):
            db.exec(delete(Quarantine).where(Quarantine.id.in_(chunk)))


def _delete_inbox_rows(settings: Settings, ids: set[int]) -> None:
    if not ids:
        return
    conn = _open_inbox(settings.inbox_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for chunk in _chunks(sorted(ids)):
            conn.execute(f"DELETE FROM inbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _compact(execute: Any, path: Path) -> str | None:
    """VACUUM (rewrites the file, leaving out the free pages that still hold deleted text) and
    truncate the write-ahead log. Returns a note when the log could not be truncated."""
    execute("VACUUM")
    busy = execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if busy and busy[0]:
        return (
            f"{path}: another process was reading it, so its write-ahead log keeps old pages "
            "until the next checkpoint"
        )
    return None


def vacuum_store(settings: Settings) -> tuple[bool, str | None]:
    """Compact the store when it is a SQLite file (other databases reclaim space their own way)."""
    from ccrl.agent.store.db import get_engine

    engine = get_engine(settings)
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return False, None
    # VACUUM cannot run inside a transaction.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:

        def run(sql: str) -> Any:
            result = conn.exec_driver_sql(sql)
            return result.fetchone() if result.returns_rows else None

        note = _compact(run, Path(engine.url.database))
    return True, note


def vacuum_inbox(settings: Settings) -> tuple[bool, str | None]:
    """Compact the inbox file the same way."""
    inbox = settings.inbox_path
    if not inbox.exists():
        return False, None
    conn = _open_inbox(inbox)
    try:
        return True, _compact(lambda sql: conn.execute(sql).fetchone(), inbox)
    finally:
        conn.close()


def _ingest_lock(settings: Settings) -> Any:
    from ccrl.agent.capture.ingest import LOCK_FILE
    from ccrl.agent.core.lock import FileLock

    return FileLock(settings.home / LOCK_FILE, name="ingest")


def _update_ingest_state(settings: Settings, purged_sessions: set[str]) -> None:
    """Make ingest's bookkeeping agree with the purged store (caller holds the ingest lock).

    - Purged sessions are no longer watched for transcript changes nor retried as failed, so
      ingest does not rebuild them on its own.
    - ``last_event_id`` drops to the highest hook event id left: SQLite hands the ids of
      deleted top rows to the next inserts, and ingest would take those new events for ones
      it has already seen.
    """
    from sqlalchemy import func
    from sqlmodel import Session as DBSession
    from sqlmodel import select

    from ccrl.agent.capture.ingest import STATE_FILE
    from ccrl.agent.store.db import ensure_private_file, get_engine
    from ccrl.agent.store.models import HookEvent

    path = settings.home / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no state: ingest rebuilds what it finds, from the purged store
    if not isinstance(state, dict):
        return
    with DBSession(get_engine(settings)) as db:
        max_id = db.exec(select(func.max(HookEvent.id))).one() or 0
    try:
        state["last_event_id"] = min(int(state.get("last_event_id") or 0), int(max_id))
    except (TypeError, ValueError):
        state["last_event_id"] = int(max_id)
    watched = state.get("transcripts")
    if isinstance(watched, dict):
        state["transcripts"] = {k: v for k, v in watched.items() if k not in purged_sessions}
    failed = state.get("failed")
    if isinstance(failed, list):
        state["failed"] = [s for s in failed if s not in purged_sessions]
    tmp = path.with_name(path.name + ".purge-tmp")
    ensure_private_file(tmp)
    tmp.write_text(json.dumps(state, sort_keys=True))
    os.replace(tmp, path)


def execute_purge(
    settings: Settings, target: PurgeTarget, rounds: int = 3, lock_timeout: float = 600.0
) -> PurgeResult:
    """Delete everything ``target`` covers, then compact the SQLite files.

    Holds the ingest lock throughout, so no ``ccrl ingest``/``import`` turns matching events
    into rows while they are being deleted. The plan is made again here rather than reused from
    the preview the user confirmed, and once more after deleting: the hook may have appended
    matching events (a session still running) meanwhile. Rounds repeat until nothing is left.
    """
    from ccrl.agent.core.lock import LockBusy

    lock = _ingest_lock(settings)
    try:
        lock.acquire("purge", wait=True, timeout=lock_timeout)
    except LockBusy as busy:
        raise PurgeError(f"ingest is running ({busy}); nothing was removed. Try again when it is done.") from busy
    try:
        return _purge_locked(settings, target, rounds)
    finally:
        lock.release()


def _purge_locked(settings: Settings, target: PurgeTarget, rounds: int) -> PurgeResult:
    removed = {key: 0 for key in PurgePlan(target=target).counts()}
    notes: list[str] = []
    purged_sessions: set[str] = set()
    transcripts: set[str] = set()
    unattributed = 0
    for round_number in range(rounds):
        plan = plan_purge(settings, target)
        if round_number == 0:
            unattributed = plan.unattributed_quarantine
        transcripts.update(plan.transcripts)
        if plan.empty:
            break
        _record_tombstones(settings, plan)
        _delete_store_rows(settings, plan)
        _delete_inbox_rows(settings, plan.inbox_ids)
        spooled = 0
        for path in plan.spool_files:
            try:
                path.unlink()
                spooled += 1
            except FileNotFoundError:
                pass  # drained by an ingest that does not take the lock; its rows go next round
        for key, value in plan.counts().items():
            removed[key] += spooled if key == "spool_files" else value
        purged_sessions |= plan.session_ids
    else:
        if not plan_purge(settings, target).empty:
            notes.append("new matching data kept arriving while purging; run the purge again")
    _update_ingest_state(settings, purged_sessions)
    vacuumed = []
    for name, compact in (("store", vacuum_store), ("inbox", vacuum_inbox)):
        done, note = compact(settings)
        if done:
            vacuumed.append(name)
        if note:
            notes.append(note)
    from ccrl.agent.operations.purge_residue import remains, store_residue

    store = store_residue(settings, compacted="store" in vacuumed)
    result = PurgeResult(removed=removed, vacuumed=vacuumed, notes=notes, store=store,
                         transcripts=sorted(transcripts))
    result.remains = remains(store, transcripts=result.transcripts, unattributed_quarantine=unattributed)
    return result
