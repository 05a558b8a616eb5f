"""``ccrl store copy``: a member's local SQLite history into the shared PostgreSQL store, on a real
server. Everything captured arrives (sessions, traces with their subagent links and tool calls,
hook events, quarantined input, purge tombstones), rows without an origin are stamped as
forwarding stamps them, a second copy adds nothing, a copy on top of forwarded events does not
double them, and an unreachable target is named without its password."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timezone

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from conftest import TRANSCRIPTS
from postgres_helpers import pg_server, pg_url  # noqa: F401  (fixtures)

runner = CliRunner()


def _local_history(tmp_path) -> None:
    """This data directory's SQLite store with imported transcripts (subagents included), hook
    events through the inbox, one quarantined input, one purge tombstone, and rows from before
    origins were recorded."""
    from ccrl.agent.capture.drain import ensure_local_stores
    from ccrl.agent.cli import app
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.store.db import get_engine
    from ccrl.hooks.inbox import append

    assert runner.invoke(app, ["import", str(TRANSCRIPTS)]).exit_code == 0
    settings = get_settings()
    inbox = ensure_local_stores(settings)
    t0 = datetime(2026, 2, 10, 10, 0, tzinfo=timezone.utc).timestamp()
    for i in range(30):
        event = {"hook_event_name": "UserPromptSubmit", "session_id": f"local-{i % 3}", "cwd": str(tmp_path),
                 "prompt": f"prompt {i}"}
        append(str(inbox), t0 + i, json.dumps(event).encode())
    append(str(inbox), t0 + 99, b"{not json")
    assert runner.invoke(app, ["ingest"]).exit_code == 0
    with get_engine(settings).begin() as conn:
        conn.execute(text("INSERT INTO purged_sessions (session_id, purged_at) VALUES ('gone-1', '2026-02-01')"))
        # rows stored before origins were recorded
        conn.execute(text("UPDATE traces SET user_name = NULL, hostname = NULL WHERE id % 2 = 0"))
        conn.execute(text("UPDATE hook_events SET user_name = NULL, hostname = NULL"))
        conn.execute(text("UPDATE traces SET covered_by_cycle = 3"))  # trained on here: new to the shared store


def _snapshot(url: str) -> dict:
    """What a store holds, by identity (never by id: the target numbers its own rows)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        traces = conn.execute(text("SELECT id, session_id, key, parent_id, prompt, status FROM traces")).all()
        ident = {t.id: (t.session_id, t.key) for t in traces}
        snap = {
            "sessions": sorted(r[0] for r in conn.execute(text("SELECT id FROM sessions"))),
            "traces": sorted((t.session_id, t.key, t.prompt, t.status) for t in traces),
            "parents": sorted((ident[t.id], ident[t.parent_id]) for t in traces if t.parent_id is not None),
            "tool_calls": sorted((ident[r.trace_id], r.tool_use_id or "", r.seq, r.name) for r in conn.execute(
                text("SELECT trace_id, tool_use_id, seq, name FROM tool_calls"))),
            "hook_events": sorted(r[0] for r in conn.execute(text("SELECT event_key FROM hook_events"))),
            "quarantine": sorted(r[0] for r in conn.execute(text("SELECT reason FROM quarantine"))),
            "purged_sessions": sorted(r[0] for r in conn.execute(text("SELECT session_id FROM purged_sessions"))),
        }
    engine.dispose()
    return snap


def test_copy_twice_copies_everything_once(ccrl_home, pg_url, tmp_path, monkeypatch):
    from ccrl.agent.cli import app
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.store.origin import hostname, member

    _local_history(tmp_path)
    local = _snapshot(get_settings().db_url)
    assert local["parents"] and local["tool_calls"] and len(local["hook_events"]) == 30

    real = (member(), hostname())  # who import and ingest stamped
    monkeypatch.setenv("CCRL_MEMBER", "alice")
    monkeypatch.setenv("CCRL_HOSTNAME", "alice-laptop")
    first = runner.invoke(app, ["store", "copy", "--to", pg_url, "--json"])
    assert first.exit_code == 0, first.output + first.stderr
    report = json.loads(first.stdout)
    tables = report["tables"]
    assert tables["traces"]["copied"] == len(local["traces"]) and tables["traces"]["present"] == 0
    assert tables["tool_calls"]["copied"] == len(local["tool_calls"])
    assert tables["hook_events"]["copied"] == 30 and tables["quarantine"]["copied"] == 1
    assert "cycles" in report["not_copied"] and "cannot" not in first.stderr
    assert _snapshot(pg_url) == local

    # Origins: kept where recorded, this member and machine where there were none.
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        trace_origins = set(conn.execute(text("SELECT user_name, hostname FROM traces")).all())
        event_origins = set(conn.execute(text("SELECT user_name, hostname FROM hook_events")).all())
    assert trace_origins == {("alice", "alice-laptop"), real}
    assert event_origins == {("alice", "alice-laptop")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM traces WHERE covered_by_cycle IS NOT NULL")).scalar() == 0

    # Twice = once: every row is recognised, nothing is doubled.
    again = runner.invoke(app, ["store", "copy", "--to", pg_url, "--json"])
    assert again.exit_code == 0, again.output + again.stderr
    tables = json.loads(again.stdout)["tables"]
    assert all(count["copied"] == 0 for count in tables.values()), tables
    assert tables["traces"]["present"] == len(local["traces"])
    assert _snapshot(pg_url) == local
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM traces")).scalar() == len(local["traces"])
        assert conn.execute(text("SELECT COUNT(*) FROM tool_calls")).scalar() == len(local["tool_calls"])
    engine.dispose()


def test_copy_after_forwarding_adds_only_what_is_missing(ccrl_home, pg_url, tmp_path):
    """Events already forwarded (the same event_key) and traces already rebuilt there (the same
    session and key) are left as they are; the rest of the history is added."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.operations.store_copy import copy_store

    _local_history(tmp_path)
    settings = get_settings()
    local = _snapshot(settings.db_url)
    src = create_engine(settings.db_url)
    dst_settings = settings.model_copy(update={"database_url": pg_url})
    from ccrl.agent.store.db import get_engine

    dst = get_engine(dst_settings)  # migrated
    with src.connect() as s, dst.begin() as d:  # "forwarded" earlier: 10 events, one session with its traces
        events = s.execute(text("SELECT event_key, received_at, event, session_id, payload FROM hook_events "
                                "ORDER BY id LIMIT 10")).all()
        for e in events:
            d.execute(text("INSERT INTO hook_events (event_key, received_at, event, session_id, payload) "
                           "VALUES (:k, :r, :e, :s, CAST(:p AS JSON))"),
                      {"k": e.event_key, "r": e.received_at, "e": e.event, "s": e.session_id, "p": e.payload})
        d.execute(text("INSERT INTO sessions (id, created_at, updated_at) VALUES ('local-0', now(), now())"))
        d.execute(text("INSERT INTO traces (session_id, key, seq, prompt, response, reasoning, steps, signals, "
                       "status, source, created_at, updated_at) SELECT 'local-0', key, seq, 'rebuilt there', '', "
                       "'[]', '[]', '{}', status, source, now(), now() FROM (VALUES " + ", ".join(
                           f"('{k}', 0, 'complete', 'hook')" for (sid, k, _p, _s) in local["traces"] if sid == "local-0")
                       + ") AS v(key, seq, status, source)"))
    src.dispose()

    report = copy_store(settings, pg_url)
    assert report.tables["hook_events"].present == 10 and report.tables["hook_events"].copied == 20
    rebuilt = sum(1 for t in local["traces"] if t[0] == "local-0")
    assert rebuilt and report.tables["traces"].present == rebuilt
    there = _snapshot(pg_url)
    assert there["hook_events"] == local["hook_events"]
    assert len(there["traces"]) == len(local["traces"])
    assert {t[2] for t in there["traces"] if t[0] == "local-0"} == {"rebuilt there"}  # left as it was


def test_unreachable_target_is_named_without_its_password(ccrl_home, tmp_path):
    from ccrl.agent.cli import app

    _local_history(tmp_path)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://alice:s3cret@127.0.0.1:{port}/ccrl"
    result = runner.invoke(app, ["store", "copy", "--to", url])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert f"cannot reach the target store postgresql+psycopg://alice:***@127.0.0.1:{port}/ccrl" in message
    assert "s3cret" not in result.output + result.stderr


def test_copy_needs_a_target_and_a_source(ccrl_home, pg_url):
    from ccrl.agent.cli import app

    result = runner.invoke(app, ["store", "copy"])
    assert result.exit_code == 2 and "--to" in result.stderr
    missing = runner.invoke(app, ["store", "copy", "--to", pg_url])  # nothing captured here yet
    assert missing.exit_code == 1 and "there is no store at" in " ".join(missing.stderr.split())


def test_rows_captured_before_todays_rules_are_redacted_before_they_travel(ccrl_home, pg_url, tmp_path):
    """A local store never re-redacted (captured by an earlier ccrl) copied into a shared store:
    the copied rows carry today's redaction, not the secrets the old rules let through."""
    from ccrl.agent.capture.drain import ensure_local_stores
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.operations.store_copy import copy_store

    from test_reredact import _older_store
    from test_secret_bytes import detector_secrets

    ensure_local_stores()
    cases = detector_secrets(seed=5)
    places = ["prompt", "response", "reasoning", "steps", "tool_input", "tool_output", "hook_event", "quarantine"]
    secrets = {place: cases[i % len(cases)][1] for i, place in enumerate(places)}
    raw = [cases[i % len(cases)][2] for i in range(len(places))]
    _older_store(ccrl_home, secrets)

    report = copy_store(get_settings(), pg_url)
    assert report.tables["traces"].copied == 2 and report.tables["hook_events"].copied == 1
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        dumped = json.dumps([list(map(str, conn.execute(text(f"SELECT * FROM {table}")).all()))
                             for table in ("traces", "tool_calls", "hook_events", "quarantine")])
    engine.dispose()
    assert "[REDACTED:" in dumped
    assert not any(secret in dumped for secret in raw)
