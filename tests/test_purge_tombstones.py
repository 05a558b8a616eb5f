"""A purge is for good: re-importing Claude Code's own transcripts, or new hook events of a
purged session, never bring the deleted data back."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

from sqlmodel import Session as DBSession
from sqlmodel import func, select

from ccrl.agent.capture.importer import import_transcripts
from ccrl.agent.capture.ingest import rebuild_session
from ccrl.agent.core.config import get_settings
from ccrl.agent.operations.purge import PurgeTarget, execute_purge
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import HookEvent, Trace

from conftest import TRANSCRIPTS

CRUD = TRANSCRIPTS / "agentlogs" / "crud.jsonl"
TODOS = TRANSCRIPTS / "agentlogs" / "todos.jsonl"
TOOL_HEAVY = TRANSCRIPTS / "spotter" / "tool_heavy.jsonl"  # several prompts in one session


def _session_id(path) -> str:
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        if obj.get("sessionId"):
            return obj["sessionId"]
    raise AssertionError(f"no session id in {path}")


def _traces(session_id: str | None = None) -> int:
    with DBSession(get_engine()) as db:
        query = select(func.count()).select_from(Trace)
        if session_id:
            query = query.where(Trace.session_id == session_id)
        return db.exec(query).one()


def test_reimport_does_not_resurrect_a_purged_session(ccrl_home, tmp_path):
    projects = tmp_path / "projects"
    projects.mkdir()
    for src in (CRUD, TODOS):
        shutil.copy(src, projects / src.name)
    import_transcripts(projects)
    purged, kept = _session_id(CRUD), _session_id(TODOS)
    assert _traces(purged) > 0 and _traces(kept) > 0
    kept_count = _traces(kept)

    settings = get_settings()
    execute_purge(settings, PurgeTarget(mode="session", session_id=purged))
    assert _traces(purged) == 0

    report = import_transcripts(projects)
    assert report.sessions_purged == 1
    assert "purged" in report.message
    assert _traces(purged) == 0
    assert _traces(kept) == kept_count


def test_hook_events_of_a_purged_session_are_dropped(ccrl_home, tmp_path):
    projects = tmp_path / "projects"
    projects.mkdir()
    shutil.copy(CRUD, projects / CRUD.name)
    import_transcripts(projects)
    sid = _session_id(CRUD)
    execute_purge(get_settings(), PurgeTarget(mode="session", session_id=sid))

    with DBSession(get_engine()) as db:
        db.add(HookEvent(
            event_key="late-event", received_at=datetime.now(timezone.utc), event="UserPromptSubmit",
            session_id=sid, payload={"session_id": sid, "hook_event_name": "UserPromptSubmit", "prompt": "again"},
        ))
        db.commit()
        result = rebuild_session(db, sid, get_settings())
        db.commit()
        assert result.purged
        assert db.exec(select(func.count()).select_from(HookEvent).where(HookEvent.session_id == sid)).one() == 0
    assert _traces(sid) == 0


def test_purge_before_keeps_turns_after_the_cutoff_and_never_restores_earlier_ones(ccrl_home, tmp_path):
    projects = tmp_path / "projects"
    projects.mkdir()
    shutil.copy(TOOL_HEAVY, projects / TOOL_HEAVY.name)
    import_transcripts(projects)
    sid = _session_id(TOOL_HEAVY)
    with DBSession(get_engine()) as db:
        starts = sorted(t.started_at for t in db.exec(select(Trace).where(Trace.session_id == sid, Trace.parent_id.is_(None))).all())
    assert len(starts) >= 2, "the fixture needs two turns for this test"
    cutoff = starts[-1]
    if cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=timezone.utc)
    before = _traces(sid)

    execute_purge(get_settings(), PurgeTarget(mode="before", before=cutoff))
    after_purge = _traces(sid)
    assert 0 < after_purge < before

    import_transcripts(projects)
    assert _traces(sid) == after_purge
