"""The schema history: migrations build exactly what models.py declares, once, keeping data."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

import ccrl.agent.models  # noqa: F401  (registers the tables)
from ccrl.agent.migrations import MIGRATIONS, applied, migrate


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
