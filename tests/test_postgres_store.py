"""The store on a real PostgreSQL server: the same models and migrations as on SQLite (from an
empty database and from every earlier schema, data kept), several agents migrating one database
at once, and the write paths (``ccrl import``, the hook's inbox through ``ccrl ingest``,
``ccrl status``) with what PostgreSQL treats differently from SQLite (time zones, NUL
characters, 64-bit sizes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlmodel import Session as DBSession
from sqlmodel import SQLModel, select
from typer.testing import CliRunner

import ccrl.agent.store.models  # noqa: F401  (registers the tables)
from ccrl.agent.store.migrations import MIGRATIONS, applied, migrate
from conftest import HOOK_PAYLOADS, TRANSCRIPTS
from migration_helpers import wait_for_pause
from postgres_helpers import pg_home, pg_server, pg_url  # noqa: F401  (fixtures)

SEEKNAL = HOOK_PAYLOADS / "seeknal_2026-02"


def _schema(engine) -> dict[str, dict]:
    """Every table's columns (name, type, nullable), indexes and unique constraints."""
    insp = inspect(engine)
    out = {}
    for table in insp.get_table_names():
        if table.startswith("_ccrl"):
            continue
        out[table] = {
            "columns": {(c["name"], str(c["type"].compile(engine.dialect)), bool(c["nullable"]))
                        for c in insp.get_columns(table)},
            "indexes": {(tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)},
            "unique": {tuple(u["column_names"]) for u in insp.get_unique_constraints(table)},
            "pk": tuple(insp.get_pk_constraint(table)["constrained_columns"]),
            "fks": {(tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(table)},
        }
    return out


def test_migrations_build_the_declared_schema_on_postgres(pg_server):
    migrated = create_engine(pg_server.create_database())
    assert migrate(migrated) == [name for name, _ in MIGRATIONS]
    declared = create_engine(pg_server.create_database())
    SQLModel.metadata.create_all(declared)
    got, want = _schema(migrated), _schema(declared)
    assert set(got) == set(want)
    for table in want:
        for part in want[table]:
            assert got[table][part] == want[table][part], (table, part, got[table][part] ^ want[table][part]
                                                           if isinstance(want[table][part], set) else None)
    # applied once: a second run does nothing
    assert migrate(migrated) == []
    with migrated.connect() as conn:
        assert applied(conn) == [name for name, _ in MIGRATIONS]
    migrated.dispose()
    declared.dispose()


def _fill_m005(conn) -> None:
    """Rows in every table of the schema as it was up to m005 (before member origins)."""
    now = "2026-03-01 10:00:00"
    conn.execute(text(f"INSERT INTO sessions (id, project_path, created_at, updated_at) "
                      f"VALUES ('s1', '/p', '{now}', '{now}')"))
    conn.execute(text(
        "INSERT INTO traces (session_id, key, seq, prompt, response, reasoning, steps, signals, status, "
        f"source, created_at, updated_at) VALUES ('s1', 'k1', 0, 'hello', 'hi', '[]', '[]', '{{}}', "
        f"'complete', 'hook', '{now}', '{now}')"))
    conn.execute(text(
        "INSERT INTO hook_events (event_key, received_at, event, session_id, payload) "
        f"VALUES ('e1', '{now}', 'Stop', 's1', '{{\"a\": 1}}')"))
    conn.execute(text(
        "INSERT INTO model_versions (number, status, base_model, metrics, gate, size_bytes, created_at) "
        f"VALUES (1, 'candidate', 'base', '{{}}', '{{}}', 123, '{now}')"))


@pytest.mark.parametrize("upto", [name for name, _ in MIGRATIONS[:-1]])
def test_upgrade_from_an_earlier_schema_keeps_rows(pg_url, upto):
    engine = create_engine(pg_url)
    migrate(engine, upto=upto)
    names = [name for name, _ in MIGRATIONS]
    with engine.connect() as conn:
        assert applied(conn) == names[: names.index(upto) + 1]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO sessions (id, created_at, updated_at) "
                          "VALUES ('early', '2026-01-01', '2026-01-01')"))
        if "m005_purged_sessions" in applied(conn):
            _fill_m005(conn)
    assert migrate(engine) == names[names.index(upto) + 1:]
    with engine.begin() as conn:
        assert "early" in conn.execute(text("SELECT id FROM sessions")).scalars().all()
        if upto == "m005_purged_sessions":
            assert conn.execute(text("SELECT prompt, user_name, hostname FROM traces")).one() == ("hello", None, None)
            assert conn.execute(text("SELECT payload::text FROM hook_events")).scalar_one() == '{"a": 1}'
            # the 64-bit size takes a GGUF over 2 GiB (INTEGER stopped at 2**31 - 1)
            conn.execute(text("UPDATE model_versions SET size_bytes = 5000000000"))
            assert conn.execute(text("SELECT size_bytes FROM model_versions")).scalar_one() == 5_000_000_000
    engine.dispose()


MIGRATE_SCRIPT = """
import sys, time
from sqlalchemy import create_engine
from ccrl.agent.store.migrations import migrate
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(",".join(migrate(create_engine(sys.argv[1]))))
"""


def test_agents_starting_together_migrate_a_new_database_once(pg_url):
    """Four agents opening one empty shared database at the same moment: each migration runs
    exactly once (pg_advisory_xact_lock, taken in each migration's transaction), and every agent
    finds the schema complete."""
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE_SCRIPT, pg_url, str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    ran = [name for out, _ in outputs for name in out.strip().split(",") if name]
    assert sorted(ran) == sorted(name for name, _ in MIGRATIONS)
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert applied(conn) == [name for name, _ in MIGRATIONS]
    engine.dispose()


def test_migrations_leave_other_applications_tables_alone(pg_url):
    """A shared database holds other applications' tables in the same schema: m007 (time-zone
    aware datetimes) changes only ccrl's own, and a name that needs quoting does not break it."""
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE billing (id integer PRIMARY KEY, at timestamp without time zone, "
                          "amount integer)"))
        conn.execute(text('CREATE TABLE "Audit Log" ("When" timestamp without time zone, "Who" varchar)'))
        conn.execute(text("INSERT INTO billing VALUES (1, '2026-03-01 10:00:00', 7)"))
        conn.execute(text('INSERT INTO "Audit Log" VALUES (\'2026-03-01 11:00:00\', \'x\')'))
    foreign_before = _foreign_columns(engine)
    assert migrate(engine) == [name for name, _ in MIGRATIONS]
    assert _foreign_columns(engine) == foreign_before
    with engine.connect() as conn:
        assert str(conn.execute(text("SELECT at FROM billing")).scalar_one()) == "2026-03-01 10:00:00"
        assert str(conn.execute(text('SELECT "When" FROM "Audit Log"')).scalar_one()) == "2026-03-01 11:00:00"
        # ccrl's own datetimes did change
        kind = conn.execute(text("SELECT data_type FROM information_schema.columns WHERE table_name = 'sessions' "
                                 "AND column_name = 'created_at'")).scalar_one()
        assert kind == "timestamp with time zone"
    engine.dispose()


def _foreign_columns(engine) -> set[tuple[str, str, str]]:
    with engine.connect() as conn:
        return set(conn.execute(text(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name IN ('billing', 'Audit Log')")).all())


PAUSING_MIGRATE_SCRIPT = """
import sys
from sqlalchemy import create_engine
from ccrl.agent.store.migrations import migrate
print(",".join(migrate(create_engine(sys.argv[1]))), flush=True)
"""


def _migrate_in_process(url: str, pause: str | None = None) -> subprocess.Popen:
    from ccrl.agent.store.migration_transactions import PAUSE_ENV

    env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
    if pause is not None:
        env[PAUSE_ENV] = pause
    return subprocess.Popen([sys.executable, "-c", PAUSING_MIGRATE_SCRIPT, url], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_migration_killed_midway_and_a_second_agent_waiting_on_postgres(pg_url):
    """One agent is killed inside m006 (after its first ALTER) while a second one waits for the
    migration lock: the second then applies m006 whole, and every migration is recorded once."""
    engine = create_engine(pg_url)
    migrate(engine, upto="m005_purged_sessions")
    victim = _migrate_in_process(pg_url, pause="m006_member_origin")
    wait_for_pause(victim, "m006_member_origin")
    waiting = _migrate_in_process(pg_url)
    time.sleep(1.0)
    assert waiting.poll() is None  # held at the lock, not running m006 beside the victim
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    out, err = waiting.communicate(timeout=120)
    names = [name for name, _ in MIGRATIONS]
    assert waiting.returncode == 0 and out.strip().split(",") == names[names.index("m006_member_origin"):], err
    with engine.connect() as conn:
        assert applied(conn) == names
        columns = {c["name"] for c in inspect(conn).get_columns("traces")}
        assert {"user_name", "hostname", "covered_by_cycle"} <= columns
    engine.dispose()


def test_cli_import_and_status_on_postgres(pg_home):
    from ccrl.agent.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["import", str(TRANSCRIPTS / "agentlogs"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # the same counts as on SQLite (tests/test_import_fixtures.py)
    assert (data["files"], data["sessions"], data["traces"], data["tool_calls"]) == (5, 5, 6, 17)
    again = runner.invoke(app, ["import", str(TRANSCRIPTS / "agentlogs"), "--json"])
    assert again.exit_code == 0, again.output
    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    info = json.loads(status.stdout)
    assert info["database_url"].startswith("postgresql+psycopg://")
    assert info["store"]["error"] is None
    assert (info["store"]["sessions"], info["store"]["traces"], info["store"]["tool_calls"]) == (5, 6, 17)

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import Trace
    from ccrl.agent.store.origin import hostname, member

    with DBSession(get_engine()) as db:
        origins = set(db.exec(select(Trace.user_name, Trace.hostname)).all())
    assert origins == {(member(), hostname())}

    # the agent's own report reads the same store (thresholds over the traces, no cycle yet)
    agent = runner.invoke(app, ["agent", "status", "--json"])
    assert agent.exit_code == 0, agent.output
    report = json.loads(agent.stdout)
    assert report["current_cycle"] is None and report["threshold"]["new"] >= 0

    # the trainer's first step reads the pooled traces into a numbered dataset version
    built = runner.invoke(app, ["build-dataset", "--json"])
    assert built.exit_code == 0, built.output
    from ccrl.agent.store.models import DatasetVersion

    with DBSession(get_engine()) as db:
        [version] = db.exec(select(DatasetVersion)).all()
    assert version.number == 1 and version.trace_count > 0 and version.content_hash


def _event(name: str, **fields) -> dict:
    payload = json.loads((SEEKNAL / f"{name}.json").read_text())[0]
    payload.update(fields)
    return payload


def test_hook_events_through_the_inbox_into_postgres(pg_home, pg_server, tmp_path):
    """The hook's path on a PostgreSQL store: inbox rows → ``ccrl ingest`` (drain, rebuild) →
    one trace. A NUL in a tool output (PostgreSQL text refuses it) is stored as U+FFFD, and the
    time of an event survives a server whose time zone is not UTC."""
    from sqlalchemy import create_engine as plain_engine

    from ccrl.agent.capture.drain import ensure_local_stores
    from ccrl.agent.cli import app
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import HookEvent, ToolCall, Trace
    from ccrl.hooks.inbox import append

    settings = get_settings()
    name = settings.db_url.rsplit("/", 1)[1]
    admin = plain_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # a server (database) set to New York time
        conn.execute(text(f'ALTER DATABASE "{name}" SET timezone = \'America/New_York\''))
    admin.dispose()

    inbox = ensure_local_stores(settings)
    cwd = tmp_path / "project"
    cwd.mkdir()
    base = {"session_id": "pg-s1", "cwd": str(cwd), "transcript_path": str(tmp_path / "none.jsonl")}
    t0 = datetime(2026, 2, 10, 10, 0, 0, tzinfo=timezone.utc).timestamp()
    events = [
        _event("user_prompt_submit", prompt="list the files", **base),
        _event("pre_tool_use", tool_name="Bash", tool_input={"command": "ls"}, tool_use_id="toolu_pg1", **base),
        _event("post_tool_use", tool_name="Bash", tool_input={"command": "ls"}, tool_use_id="toolu_pg1",
               tool_response={"stdout": "a.txt\x00b.bin", "stderr": "", "interrupted": False}, **base),
        _event("stop", last_assistant_message="Two files.", **base),
    ]
    for i, payload in enumerate(events):
        append(str(inbox), t0 + i, json.dumps(payload).encode())

    result = CliRunner().invoke(app, ["ingest", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["errors"] == []
    assert report["drain"]["stored"] == 4 and report["traces_created"] == 1, report

    with DBSession(get_engine()) as db:
        stored = db.exec(select(HookEvent).order_by(HookEvent.id)).all()
        assert [e.received_at.replace(tzinfo=timezone.utc).timestamp() for e in stored] == [t0 + i for i in range(4)]
        [trace] = db.exec(select(Trace)).all()
        [call] = db.exec(select(ToolCall)).all()
        assert trace.prompt == "list the files" and trace.session_id == "pg-s1"
        assert "a.txt\ufffdb.bin" in call.output
        # a query with an aware bound compares in UTC too
        cutoff = datetime.fromtimestamp(t0 + 1.5, timezone.utc)
        assert len(db.exec(select(HookEvent).where(HookEvent.received_at < cutoff)).all()) == 2
        # the stored payload (JSON) keeps the NUL itself
        assert stored[2].payload["tool_response"]["stdout"] == "a.txt\x00b.bin"
    assert inbox.exists()
    import sqlite3

    with sqlite3.connect(inbox) as conn:
        assert conn.execute("SELECT COUNT(*) FROM inbox").fetchone()[0] == 0


def test_cutoff_queries_use_utc_whatever_the_server_zone(pg_home, pg_server):
    """``ccrl purge --before`` compares aware datetimes with stored ones: on a server in another
    time zone the comparison still happens in UTC."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import Session

    name = get_settings().db_url.rsplit("/", 1)[1]
    admin = create_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" SET timezone = \'Asia/Tokyo\''))
    admin.dispose()
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    with session_scope() as db:
        db.add(Session(id="a", started_at=noon - timedelta(minutes=1)))
        db.add(Session(id="b", started_at=noon + timedelta(minutes=1)))
    with session_scope() as db:
        assert db.exec(select(Session.id).where(Session.started_at < noon)).all() == ["a"]
        assert db.get(Session, "b").started_at.replace(tzinfo=timezone.utc) == noon + timedelta(minutes=1)
