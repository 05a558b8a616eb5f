"""What ``ccrl status`` reports, gathered cheaply: COUNT queries, one read-only look at the inbox,
a directory listing of the spool dirs, and the hook entries in the Claude Code settings files.

Never imports torch or transformers: status must answer in well under a second. Each section is
its own function so later work (training runs, model versions) adds a section and a key without
touching the others. ``gather_status`` returns plain JSON-able data; its keys are a stable
interface (``ccrl status --json``): keys may be added, never renamed or removed.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ccrl.agent.capture.claude_settings import SCOPES, scope_status, settings_path
from ccrl.agent.capture.spool import spool_files, spool_time
from ccrl.agent.core.config import Settings
from ccrl.agent.core.secrets_display import mask_url, scrub_password


def _utc_iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)  # the store keeps UTC, with or without an offset
    return value.astimezone(timezone.utc).isoformat()


def pending_counts(settings: Settings) -> dict[str, Any]:
    """Events captured but not yet ingested: inbox rows and spool files."""
    inbox_rows = 0
    newest: datetime | None = None
    error = None
    inbox = settings.inbox_path
    if inbox.exists():
        try:
            # Read-only URI: looking must never create or change the inbox.
            conn = sqlite3.connect(f"file:{quote(str(inbox))}?mode=ro", uri=True, timeout=5)
            try:
                count, latest = conn.execute("SELECT COUNT(*), MAX(received_at) FROM inbox").fetchone()
            finally:
                conn.close()
            inbox_rows = int(count)
            if latest is not None:
                newest = datetime.fromtimestamp(float(latest), tz=timezone.utc)
        except sqlite3.Error as exc:
            error = f"cannot read the inbox {inbox}: {exc}"
    files = spool_files(settings)
    for path in files:
        try:
            when = spool_time(path)
        except OSError:
            continue
        newest = when if newest is None or when > newest else newest
    return {
        "inbox": inbox_rows,
        "spool": len(files),
        "total": inbox_rows + len(files),
        "newest_at": _utc_iso(newest),
        "error": error,
    }


def store_counts(settings: Settings) -> dict[str, Any]:
    """Row counts of the store (one round trip of COUNT subqueries) and the newest hook event."""
    from sqlalchemy import func, select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import HookEvent, Quarantine, Session, ToolCall, Trace

    def count(model: Any, *where: Any) -> Any:
        return select(func.count()).select_from(model).where(*where).scalar_subquery()

    query = select(
        count(Session).label("sessions"),
        count(Trace).label("traces"),
        count(Trace, Trace.parent_id.is_not(None)).label("subagent_traces"),
        count(ToolCall).label("tool_calls"),
        count(ToolCall, ToolCall.is_error.is_(True)).label("tool_errors"),
        count(HookEvent).label("hook_events"),
        count(Quarantine).label("quarantined"),
        select(func.max(HookEvent.received_at)).scalar_subquery().label("last_event_at"),
    )
    keys = ("sessions", "traces", "subagent_traces", "tool_calls", "tool_errors", "hook_events", "quarantined")
    try:
        with get_engine(settings).connect() as conn:
            row = conn.execute(query).one()
    except Exception as exc:  # noqa: BLE001  status reports any store failure (driver missing, unreachable, locked…)
        message = scrub_password(f"cannot read the store {mask_url(settings.db_url)}: {exc}", settings.db_url)
        return {**{key: None for key in keys}, "last_event_at": None, "error": message}
    result: dict[str, Any] = {key: int(getattr(row, key)) for key in keys}
    last = row.last_event_at
    if isinstance(last, str):  # some drivers hand back text for MAX() of a datetime
        last = datetime.fromisoformat(last)
    result["last_event_at"] = _utc_iso(last)
    result["error"] = None
    return result


def hooks_status(settings: Settings, project_dir: Path | None = None) -> dict[str, Any]:
    """Per settings scope (user, and project/local of ``project_dir``): is ccrl's hook there,
    and can its interpreter still run."""
    from ccrl.hooks.capture import hook_command

    expected = hook_command(str(settings.home))
    return {
        scope: scope_status(scope, settings_path(scope, project_dir), expected).to_dict()
        for scope in SCOPES
    }


def agent_section(settings: Settings) -> dict[str, Any]:
    """The always-on agent (``agent_status.agent_status``): running or not, next threshold and
    how far it is, current cycle and step, recent runs, deployed version, last error."""
    from ccrl.agent.daemon.agent_status import agent_status

    try:
        return {**agent_status(settings, recent=3), "error": None}
    except Exception as exc:  # noqa: BLE001  status reports any store failure instead of failing
        message = scrub_password(f"cannot read the agent's state: {exc}", settings.db_url)
        return {"running": None, "error": message}


def gather_status(settings: Settings, project_dir: Path | None = None) -> dict[str, Any]:
    """Everything ``ccrl status`` shows, as JSON-able data with stable keys."""
    store = store_counts(settings)
    pending = pending_counts(settings)
    times = [t for t in (store["last_event_at"], pending["newest_at"]) if t]
    return {
        "data_dir": str(settings.home),
        "database_url": mask_url(settings.db_url),
        "store": store,
        "pending": pending,
        "last_capture_at": max(times, key=datetime.fromisoformat) if times else None,
        "hooks": hooks_status(settings, project_dir),
        "agent": agent_section(settings),
    }
