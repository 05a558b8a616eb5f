"""The schema history: migrations build exactly what models.py declares, once, keeping data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

import ccrl.agent.store.models  # noqa: F401  (registers the tables)
from ccrl.agent.store.migration_transactions import PAUSE_ENV
from ccrl.agent.store.migrations import MIGRATIONS, applied, migrate
from migration_helpers import wait_for_pause


def _schema(engine) -> dict[str, set[tuple[str, bool]]]:
    insp = inspect(engine)
    return {
        t: {(c["name"], bool(c["nullable"])) for c in insp.get_columns(t)}
        for t in insp.get_table_names()
        if not t.startswith("_ccrl")
    }


def test_migrations_build_the_declared_schema(tmp_path):
    migrated = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(migrated)
    declared = create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    SQLModel.metadata.create_all(declared)
    assert _schema(migrated) == _schema(declared)


def test_migrations_apply_once(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert migrate(engine) == [name for name, _ in MIGRATIONS]
    assert migrate(engine) == []
    with engine.connect() as conn:
        assert applied(conn) == [name for name, _ in MIGRATIONS]


def test_upgrade_keeps_existing_rows(tmp_path):
    """A database at the first migration, with data, upgrades to head without losing it."""
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    first = MIGRATIONS[0][0]
    migrate(engine, upto=first)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO sessions (id, created_at, updated_at) VALUES ('s1', '2026-01-01', '2026-01-01')"
        ))
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM sessions")).scalar_one() == "s1"
        assert applied(conn) == [name for name, _ in MIGRATIONS]


def test_traces_the_last_cycle_covered_stay_covered(tmp_path):
    """m008: a store that counted new traces above the last cycle's id watermark marks the traces
    that watermark covered (not the open ones: they count once complete), so the upgrade starts
    no cycle on traces already trained on."""
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine, upto="m007_postgres_column_types")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO sessions (id, created_at, updated_at) VALUES ('s1', '2026-01-01', '2026-01-01')"))
        for i, status in enumerate(["complete", "open", "complete", "complete", "complete"], start=1):
            conn.execute(text("INSERT INTO traces (id, session_id, key, seq, prompt, response, reasoning, steps, signals, "
                              "status, source, created_at, updated_at) VALUES (:i, 's1', :k, 0, '', '', '[]', '[]', "
                              "'{}', :s, 'hook', '2026-01-01', '2026-01-01')"), {"i": i, "k": f"k{i}", "s": status})
        for number, watermark in ((1, 2), (2, 3)):
            conn.execute(text("INSERT INTO cycles (number, status, trigger, steps, usable_traces, new_traces, "
                              "trace_watermark, config, created_at, updated_at) VALUES (:n, 'completed', 'threshold', "
                              "'{}', 0, 0, :w, '{}', '2026-01-01', '2026-01-01')"), {"n": number, "w": watermark})
    migrate(engine)
    with engine.connect() as conn:
        covered = dict(conn.execute(text("SELECT id, covered_by_cycle FROM traces ORDER BY id")).all())
    assert covered == {1: 2, 2: None, 3: 2, 4: None, 5: None}


# ---------------------------------------------------------------------------------------------
# Crashes and concurrent starts: each migration is one transaction, under the write lock.
# The processes below start the store the way every ccrl command does (``get_engine``), and the
# runner's test pause point (CCRL_TEST_PAUSE_IN_MIGRATION) stops one inside a real migration,
# right after its first write, with its transaction open.

START_STORE = "from ccrl.agent.store.db import get_engine; get_engine(); print('started')"


def _start_store(home, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "CCRL_HOME": str(home)}
    env.pop("CCRL_DATABASE_URL", None)
    env.pop(PAUSE_ENV, None)
    if pause is not None:
        env[PAUSE_ENV] = pause
    return subprocess.Popen([sys.executable, "-c", START_STORE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _store_at(home, upto: str):
    """A store migrated up to ``upto`` holding a session and three traces (two closed)."""
    home.mkdir(parents=True)
    engine = create_engine(f"sqlite:///{home / 'ccrl.db'}")
    migrate(engine, upto=upto)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO sessions (id, created_at, updated_at) VALUES ('s1', '2026-01-01', '2026-01-01')"))
        for i, status in enumerate(["complete", "open", "complete"], start=1):
            conn.execute(text("INSERT INTO traces (id, session_id, key, seq, prompt, response, reasoning, steps, signals, "
                              "status, source, created_at, updated_at) VALUES (:i, 's1', :k, 0, 'p', 'r', '[]', '[]', "
                              "'{}', :s, 'hook', '2026-01-01', '2026-01-01')"), {"i": i, "k": f"k{i}", "s": status})
        conn.execute(text("INSERT INTO cycles (number, status, trigger, steps, usable_traces, new_traces, "
                          "trace_watermark, config, created_at, updated_at) VALUES (1, 'completed', 'threshold', "
                          "'{}', 0, 0, 3, '{}', '2026-01-01', '2026-01-01')"))
    engine.dispose()
    return home / "ccrl.db"


def _assert_fully_migrated(db, tmp_path) -> None:
    engine = create_engine(f"sqlite:///{db}")
    declared = create_engine(f"sqlite:///{tmp_path / 'declared.db'}")
    SQLModel.metadata.create_all(declared)
    assert _schema(engine) == _schema(declared)
    with engine.connect() as conn:
        assert applied(conn) == [name for name, _ in MIGRATIONS]
        assert conn.execute(text("SELECT id, covered_by_cycle FROM traces ORDER BY id")).all() == [(1, 1), (2, None), (3, 1)]
    engine.dispose()
    declared.dispose()


@pytest.mark.parametrize("name", ["m006_member_origin", "m008_trace_cycle_coverage"])
def test_a_process_killed_inside_a_migration_leaves_a_store_the_next_start_migrates(tmp_path, name):
    """SIGKILL after the migration's first ALTER: nothing of it stays (it was one transaction),
    so the next start applies it whole instead of failing on "duplicate column" forever."""
    home = tmp_path / "home"
    names = [n for n, _ in MIGRATIONS]
    db = _store_at(home, names[names.index(name) - 1])
    victim = _start_store(home, pause=name)
    wait_for_pause(victim, name)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:  # as the crash left it: the migration is not there at all
        assert name not in applied(conn)
        assert "covered_by_cycle" not in {c["name"] for c in inspect(conn).get_columns("traces")}
    engine.dispose()
    restart = _start_store(home)
    out, err = restart.communicate(timeout=120)
    assert restart.returncode == 0 and out.strip() == "started", err
    _assert_fully_migrated(db, tmp_path)


def test_two_processes_starting_together_both_migrate_cleanly(tmp_path):
    """The first holds the write lock inside m006 (paused after its first ALTER) while the second
    starts: the second waits at BEGIN IMMEDIATE, then finds m006 applied, instead of running it
    again. Both start; every migration is recorded once; the schema is the declared one."""
    home = tmp_path / "home"
    db = _store_at(home, "m005_purged_sessions")
    first = _start_store(home, pause="m006_member_origin:3")
    wait_for_pause(first, "m006_member_origin")
    second = _start_store(home)
    results = [p.communicate(timeout=180) for p in (first, second)]
    for proc, (out, err) in zip((first, second), results):
        assert proc.returncode == 0 and out.strip() == "started", err
    _assert_fully_migrated(db, tmp_path)


def test_processes_starting_together_on_a_new_store_all_succeed(tmp_path):
    """Three commands opening a store that does not exist yet, at the same moment."""
    home = tmp_path / "home"
    procs = [_start_store(home) for _ in range(3)]
    results = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    engine = create_engine(f"sqlite:///{home / 'ccrl.db'}")
    with engine.connect() as conn:
        assert applied(conn) == [name for name, _ in MIGRATIONS]
    declared = create_engine(f"sqlite:///{tmp_path / 'declared.db'}")
    SQLModel.metadata.create_all(declared)
    assert _schema(engine) == _schema(declared)


def test_the_rest_of_the_app_keeps_its_transactions_after_migrating(ccrl_home):
    """The migrating connection goes back to the pool as it came: pysqlite's own transaction
    handling and the engine's busy timeout (a session's write still rolls back on error)."""
    from ccrl.agent.store.db import get_engine, session_scope
    from ccrl.agent.store.models import Session

    engine = get_engine()
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver.isolation_level == "" and conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    with pytest.raises(RuntimeError), session_scope() as session:
        session.add(Session(id="gone"))
        session.flush()
        raise RuntimeError
    with session_scope() as session:
        assert session.get(Session, "gone") is None


def test_a_migrated_store_is_only_read_at_start(tmp_path, monkeypatch):
    """Nothing pending: no write lock is taken, so a command starting while the agent holds a long
    write transaction does not wait for it (here the wait for the lock is cut to 0.1 s: taking
    it would fail with "database is locked")."""
    import ccrl.agent.store.migration_transactions as migration_transactions

    db = tmp_path / "m.db"
    engine = create_engine(f"sqlite:///{db}")
    migrate(engine)
    engine.dispose()
    monkeypatch.setattr(migration_transactions, "SQLITE_LOCK_WAIT_MS", 100)
    writer = create_engine(f"sqlite:///{db}").connect()
    writer.connection.driver_connection.isolation_level = None
    writer.exec_driver_sql("BEGIN IMMEDIATE")  # another process's long write transaction
    try:
        starting = create_engine(f"sqlite:///{db}", connect_args={"timeout": 0})
        assert migrate(starting) == []
        with starting.connect() as conn:
            assert applied(conn) == [name for name, _ in MIGRATIONS]
        starting.dispose()
    finally:
        writer.exec_driver_sql("ROLLBACK")
        writer.close()
