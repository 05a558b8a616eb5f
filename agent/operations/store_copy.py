"""Copy an existing store's captured data into another store (``ccrl store copy``): a member's
local SQLite history into the team's shared PostgreSQL store, once, when they join.

What is copied is captured data: sessions, traces with their tool calls, raw hook events,
quarantined input, and purge tombstones (a session purged locally stays purged). What a store
keeps about its own machine's work is not: dataset versions, training runs, model versions,
cycles, evaluations and A/B votes name files on that machine, and the shared store's training
agent makes its own.

Idempotent: each row is inserted only when its identity is not in the target yet, with the
identities forwarding and ingest use (``ON CONFLICT DO NOTHING``):

- sessions by ``id``; hook events by ``event_key`` (the hash of arrival time and payload the
  drain gives each event); purge tombstones by ``session_id``;
- traces by ``(session_id, key)`` (the stable turn identity ingest assigns); a trace's tool
  calls are inserted in the same transaction as the trace and only with a trace that was new,
  so a trace already there (copied before, or forwarded and rebuilt from the same events) keeps
  exactly its own calls, and tool calls without a ``tool_use_id`` are never doubled;
- quarantined input by arrival time, reason and payload (as the drain recognises re-delivery).

Running it twice, or again after it was interrupted, copies only what is missing. Ids are the
target's own (its sequences number the rows); ``parent_id`` links between traces are mapped
through the trace identities. Rows without an origin (stored before origins were recorded) are
stamped with this member and machine, as forwarding stamps events; rows with one keep it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from ccrl.agent.core.config import Settings
from ccrl.agent.store import origin
from ccrl.agent.store.models import HookEvent, PurgedSession, Quarantine, Session, ToolCall, Trace

BATCH_ROWS = 500

SESSIONS: Table = Session.__table__  # type: ignore[attr-defined]
TRACES: Table = Trace.__table__  # type: ignore[attr-defined]
TOOL_CALLS: Table = ToolCall.__table__  # type: ignore[attr-defined]
HOOK_EVENTS: Table = HookEvent.__table__  # type: ignore[attr-defined]
QUARANTINE: Table = Quarantine.__table__  # type: ignore[attr-defined]
TOMBSTONES: Table = PurgedSession.__table__  # type: ignore[attr-defined]

# The order of the report and of the copy (traces need their sessions first).
TABLES = ("sessions", "traces", "tool_calls", "hook_events", "quarantine", "purged_sessions")
NOT_COPIED = ("dataset_versions", "training_runs", "model_versions", "cycles", "evaluations", "ab_votes")


class StoreCopyError(RuntimeError):
    """The copy cannot start or go on: a store cannot be reached or opened, or the request is wrong.
    The message names stores without their passwords."""


@dataclass
class TableCount:
    """Rows of one table: read from the source, inserted into the target, already there."""

    read: int = 0
    copied: int = 0
    present: int = 0


@dataclass
class CopyReport:
    source: str
    target: str
    tables: dict[str, TableCount] = field(default_factory=lambda: {name: TableCount() for name in TABLES})
    not_copied: tuple[str, ...] = NOT_COPIED

    @property
    def copied(self) -> int:
        return sum(t.copied for t in self.tables.values())

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "copied": self.copied,
                "tables": {name: asdict(count) for name, count in self.tables.items()},
                "not_copied": list(self.not_copied)}


# progress(table, rows done, rows in the source)
Progress = Callable[[str, int, int], None]


def local_store_url(settings: Settings) -> str:
    """The local SQLite store of this data directory (whatever ``database_url`` says)."""
    return f"sqlite:///{settings.home / 'ccrl.db'}"


def _masked(url: str) -> str:
    from ccrl.agent.core.secrets_display import mask_url

    return mask_url(url)


def _open(settings: Settings, url: str, role: str) -> Engine:
    """The engine of ``url`` (created and migrated as for the configured store); a store that
    cannot be reached or opened raises :class:`StoreCopyError` naming it without its password."""
    from ccrl.agent.core.secrets_display import scrub_password
    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.remote import unreachable

    try:
        return get_engine(settings.model_copy(update={"database_url": url}))
    except Exception as exc:  # noqa: BLE001 - unreachable server, missing driver, bad URL: each said plainly
        orig = getattr(exc, "orig", None) or exc
        detail = (str(orig).strip().splitlines() or [type(exc).__name__])[0]
        verb = "reach" if unreachable(exc) else "open"
        raise StoreCopyError(scrub_password(f"cannot {verb} the {role} store {_masked(url)}: {detail}", url)) from None


def _insert_new(conn: Connection, table: Table, rows: list[dict[str, Any]], keys: list[str],
                returning: tuple[Any, ...] = ()) -> list[Any]:
    """INSERT the rows whose ``keys`` are not in ``table`` yet; the inserted rows' ``returning``
    columns (every dialect ccrl runs on has ON CONFLICT DO NOTHING and RETURNING)."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise StoreCopyError(f"copying into a {conn.dialect.name} store is not supported (PostgreSQL or SQLite)")
    stmt = dialect_insert(table).on_conflict_do_nothing(index_elements=keys)
    if returning:
        return list(conn.execute(stmt.returning(*returning), rows).all())
    conn.execute(stmt, rows)
    return []


def _stamped(row: dict[str, Any], stamp: dict[str, str]) -> dict[str, Any]:
    """The row with this member and machine as its origin when it has none."""
    if row.get("user_name") is None and row.get("hostname") is None:
        row.update(stamp)
    return row


def _batches(conn: Connection, table: Table, order: Any, size: int = BATCH_ROWS) -> Iterator[list[dict[str, Any]]]:
    """The source table's rows as dicts, in ``order`` (a unique column), ``size`` at a time."""
    last = None
    while True:
        query = select(table).order_by(order).limit(size)
        if last is not None:
            query = query.where(order > last)
        rows = [dict(r._mapping) for r in conn.execute(query)]
        if not rows:
            return
        last = rows[-1][order.name]
        yield rows


def _count(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def _target_trace_ids(conn: Connection, identities: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Target trace ids of ``(session_id, key)`` identities."""
    found: dict[tuple[str, str], int] = {}
    by_session: dict[str, list[str]] = {}
    for session_id, key in identities:
        by_session.setdefault(session_id, []).append(key)
    items = list(by_session.items())
    for i in range(0, len(items), 100):
        clause = or_(*(and_(TRACES.c.session_id == sid, TRACES.c.key.in_(keys)) for sid, keys in items[i:i + 100]))
        for tid, sid, key in conn.execute(select(TRACES.c.id, TRACES.c.session_id, TRACES.c.key).where(clause)):
            found[(sid, key)] = tid
    return found


class _Copier:
    def __init__(self, source: Engine, target: Engine, report: CopyReport, progress: Progress) -> None:
        self.source, self.target, self.report, self.progress = source, target, report, progress
        self.stamp = origin.stamp()

    def run(self) -> None:
        with self.source.connect() as src:
            totals = {"sessions": _count(src, SESSIONS), "traces": _count(src, TRACES),
                      "tool_calls": _count(src, TOOL_CALLS), "hook_events": _count(src, HOOK_EVENTS),
                      "quarantine": _count(src, QUARANTINE), "purged_sessions": _count(src, TOMBSTONES)}
            self._keyed(src, "sessions", SESSIONS, SESSIONS.c.id, ["id"], totals, stamp=True)
            self._traces(src, totals)
            self._keyed(src, "hook_events", HOOK_EVENTS, HOOK_EVENTS.c.id, ["event_key"], totals, stamp=True,
                        drop_id=True)
            self._quarantine(src, totals)
            self._keyed(src, "purged_sessions", TOMBSTONES, TOMBSTONES.c.session_id, ["session_id"], totals)

    def _keyed(self, src: Connection, name: str, table: Table, order: Any, keys: list[str],
               totals: dict[str, int], *, stamp: bool = False, drop_id: bool = False) -> None:
        """A table with a unique identity: each batch in one transaction, new rows only."""
        count = self.report.tables[name]
        for rows in _batches(src, table, order):
            for row in rows:
                if drop_id:
                    row.pop("id", None)  # the target numbers its own rows
                if stamp:
                    _stamped(row, self.stamp)
            with self.target.begin() as dst:
                inserted = len(_insert_new(dst, table, rows, keys, returning=(table.c[keys[0]],)))
            count.read += len(rows)
            count.copied += inserted
            count.present += len(rows) - inserted
            self.progress(name, count.read, totals[name])

    def _traces(self, src: Connection, totals: dict[str, int]) -> None:
        """Traces in id order, each batch in one transaction with the tool calls of the traces
        it inserted; parent links resolved through ``(session_id, key)``."""
        traces, calls = self.report.tables["traces"], self.report.tables["tool_calls"]
        identity: dict[int, tuple[str, str]] = {}  # source id -> (session_id, key)
        unresolved: list[tuple[tuple[str, str], tuple[str, str] | None, int]] = []
        for rows in _batches(src, TRACES, TRACES.c.id):
            for row in rows:
                identity[row["id"]] = (row["session_id"], row["key"])
            missing_parents = {r["parent_id"] for r in rows if r["parent_id"] is not None} - set(identity)
            if missing_parents:  # a parent with a higher id than its child: look it up
                for pid, sid, key in src.execute(select(TRACES.c.id, TRACES.c.session_id, TRACES.c.key)
                                                 .where(TRACES.c.id.in_(missing_parents))):
                    identity[pid] = (sid, key)
            source_ids = {(r["session_id"], r["key"]): r["id"] for r in rows}
            parents = {(r["session_id"], r["key"]): identity.get(r["parent_id"]) for r in rows}
            with self.target.begin() as dst:
                parent_ids = _target_trace_ids(dst, {p for p in parents.values() if p is not None})
                values = []
                for row in rows:
                    parent = parents[(row["session_id"], row["key"])]
                    value = {k: v for k, v in row.items() if k != "id"}  # the target numbers its own rows
                    value["parent_id"] = parent_ids.get(parent) if parent else None
                    value["covered_by_cycle"] = None  # the source's cycles are not the target's: new there
                    values.append(_stamped(value, self.stamp))
                inserted = _insert_new(dst, TRACES, values, ["session_id", "key"],
                                       returning=(TRACES.c.id, TRACES.c.session_id, TRACES.c.key))
                new_ids = {(sid, key): tid for tid, sid, key in inserted}
                for ident, tid in new_ids.items():
                    parent = parents[ident]
                    if parent is not None and parent not in parent_ids:
                        unresolved.append((ident, parent, tid))
                calls.read += self._tool_calls(src, dst, {source_ids[i]: t for i, t in new_ids.items()}, calls)
            traces.read += len(rows)
            traces.copied += len(new_ids)
            traces.present += len(rows) - len(new_ids)
            self.progress("traces", traces.read, totals["traces"])
        # Traces whose parent was copied in a later batch (or not at all: then it stays unlinked).
        if unresolved:
            with self.target.begin() as dst:
                found = _target_trace_ids(dst, {p for _, p, _ in unresolved if p is not None})
                for _ident, parent, tid in unresolved:
                    if parent in found:
                        dst.execute(update(TRACES).where(TRACES.c.id == tid).values(parent_id=found[parent]))
        # Tool calls of traces that were already in the target are that trace's business there.
        calls.present += max(0, totals["tool_calls"] - calls.read)
        calls.read = totals["tool_calls"]
        self.progress("tool_calls", calls.read, totals["tool_calls"])

    def _tool_calls(self, src: Connection, dst: Connection, new_traces: dict[int, int], count: TableCount) -> int:
        """Insert the tool calls of newly inserted traces (source id -> target id); returns how
        many were read."""
        if not new_traces:
            return 0
        rows = [dict(r._mapping) for r in src.execute(
            select(TOOL_CALLS).where(TOOL_CALLS.c.trace_id.in_(list(new_traces))).order_by(TOOL_CALLS.c.id))]
        for row in rows:
            row.pop("id")
            row["trace_id"] = new_traces[row["trace_id"]]
        inserted = 0
        for i in range(0, len(rows), BATCH_ROWS):
            inserted += len(_insert_new(dst, TOOL_CALLS, rows[i:i + BATCH_ROWS], ["tool_use_id"],
                                        returning=(TOOL_CALLS.c.id,)))
        count.copied += inserted
        count.present += len(rows) - inserted  # the same tool_use_id under another trace there
        return len(rows)

    def _quarantine(self, src: Connection, totals: dict[str, int]) -> None:
        """No unique identity: a row is there when one with its arrival time, reason and payload is."""
        count = self.report.tables["quarantine"]
        for rows in _batches(src, QUARANTINE, QUARANTINE.c.id, size=100):
            with self.target.begin() as dst:
                for row in rows:
                    row.pop("id")
                    exists = dst.execute(select(QUARANTINE.c.id).where(
                        QUARANTINE.c.received_at == row["received_at"], QUARANTINE.c.reason == row["reason"],
                        QUARANTINE.c.payload == row["payload"])).first()
                    if exists:
                        count.present += 1
                    else:
                        dst.execute(insert(QUARANTINE).values(**_stamped(row, self.stamp)))
                        count.copied += 1
            count.read += len(rows)
            self.progress("quarantine", count.read, totals["quarantine"])


def _redact_with_todays_rules(settings: Settings, source_url: str) -> None:
    """A store captured by an earlier ccrl is re-redacted before its rows travel: the target may
    already be re-redacted (its recorded rules current), and would never look at them again."""
    from ccrl.agent.capture.ingest import LOCK_FILE
    from ccrl.agent.capture.reredact import reredact_store
    from ccrl.agent.core.lock import FileLock

    with FileLock(settings.home / LOCK_FILE, name="ingest").hold("store copy", wait=True, timeout=600):
        reredact_store(settings.model_copy(update={"database_url": source_url}))


def copy_store(settings: Settings, target_url: str, source_url: str | None = None,
               progress: Progress | None = None) -> CopyReport:
    """Copy the captured data of ``source_url`` (default: this data directory's SQLite store)
    into ``target_url``, idempotently. Raises :class:`StoreCopyError` when a store cannot be
    reached or the request makes no sense; what was committed before a failure stays, and
    running it again copies the rest."""
    from sqlalchemy.engine import make_url

    source_url = source_url or local_store_url(settings)
    try:
        same = make_url(source_url) == make_url(target_url)
    except Exception as exc:  # noqa: BLE001 - an unparsable URL
        raise StoreCopyError(f"not a database URL: {exc}") from None
    if same:
        raise StoreCopyError(f"the source and the target are the same store ({_masked(target_url)})")
    sqlite_file = source_url[len("sqlite:///"):] if source_url.startswith("sqlite:///") else None
    if sqlite_file is not None and not Path(sqlite_file).is_file():
        raise StoreCopyError(f"there is no store at {sqlite_file} to copy")
    source = _open(settings, source_url, "source")
    target = _open(settings, target_url, "target")
    _redact_with_todays_rules(settings, source_url)
    report = CopyReport(source=_masked(source_url), target=_masked(target_url))
    from ccrl.agent.core.secrets_display import scrub_password
    from ccrl.agent.store.remote import unreachable

    try:
        _Copier(source, target, report, progress or (lambda *_: None)).run()
    except Exception as exc:
        if not unreachable(exc):
            raise
        orig = getattr(exc, "orig", None) or exc
        detail = (str(orig).strip().splitlines() or [type(exc).__name__])[0]
        raise StoreCopyError(scrub_password(
            f"lost the connection to {_masked(target_url)} after copying {report.copied} rows: {detail}; "
            "run the copy again to copy the rest (nothing is copied twice)", target_url)) from None
    return report
