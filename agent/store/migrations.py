"""The whole schema history, as small named steps applied once each (in the style of ``llm``).

Each migration is a function of a SQLAlchemy ``Connection``, written in dialect-neutral
SQLAlchemy Core so it runs the same on SQLite and PostgreSQL. Applied names are recorded in
``_ccrl_migrations``. Never edit a migration that has shipped: add a new one (m007 says why it
is the one exception). A test checks that the migrated schema matches ``models.py`` exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine

from ccrl.agent.store.migration_transactions import locked_transaction, migration_connection, pause_point

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []
MIGRATIONS_TABLE = "_ccrl_migrations"


def ccrl_table_names() -> set[str]:
    """The tables ccrl owns (those ``models.py`` declares): a shared PostgreSQL database holds
    other applications' tables too, and a migration never touches those."""
    from sqlmodel import SQLModel

    import ccrl.agent.store.models  # noqa: F401  (registers the tables)

    return set(SQLModel.metadata.tables)


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_capture_tables(conn: Connection) -> None:
    md = MetaData()
    Table(
        "sessions", md,
        Column("id", String, primary_key=True),
        Column("project_path", String, index=True),
        Column("transcript_path", String),
        Column("model", String),
        Column("cc_version", String),
        Column("git_branch", String),
        Column("source", String),
        Column("started_at", DateTime),
        Column("ended_at", DateTime),
        Column("end_reason", String),
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime, nullable=False),
    )
    Table(
        "traces", md,
        Column("id", Integer, primary_key=True),
        Column("session_id", String, ForeignKey("sessions.id"), nullable=False, index=True),
        Column("key", String, nullable=False),
        Column("parent_id", Integer, ForeignKey("traces.id"), index=True),
        Column("agent_id", String),
        Column("agent_type", String),
        Column("prompt_id", String),
        Column("user_uuid", String),
        Column("seq", Integer, nullable=False),
        Column("prompt", Text, nullable=False),
        Column("response", Text, nullable=False),
        Column("reasoning", JSON, nullable=False),
        Column("steps", JSON, nullable=False),
        Column("signals", JSON, nullable=False),
        Column("status", String, nullable=False),
        Column("source", String, nullable=False),
        Column("cwd", String),
        Column("model", String),
        Column("started_at", DateTime),
        Column("ended_at", DateTime),
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime, nullable=False),
        UniqueConstraint("session_id", "key", name="uq_traces_session_key"),
    )
    Table(
        "tool_calls", md,
        Column("id", Integer, primary_key=True),
        Column("trace_id", Integer, ForeignKey("traces.id"), nullable=False, index=True),
        Column("tool_use_id", String, unique=True),
        Column("seq", Integer, nullable=False),
        Column("name", String, nullable=False),
        Column("input", JSON, nullable=False),
        Column("output", Text),
        Column("is_error", Boolean, nullable=False),
        Column("is_interrupt", Boolean, nullable=False),
        Column("duration_ms", Integer),
        Column("started_at", DateTime),
    )
    Table(
        "hook_events", md,
        Column("id", Integer, primary_key=True),
        Column("event_key", String, nullable=False, unique=True),
        Column("received_at", DateTime, nullable=False),
        Column("event", String, nullable=False, index=True),
        Column("session_id", String, index=True),
        Column("tool_use_id", String),
        Column("prompt_id", String),
        Column("agent_id", String),
        Column("payload", JSON, nullable=False),
    )
    Table(
        "quarantine", md,
        Column("id", Integer, primary_key=True),
        Column("received_at", DateTime, nullable=False),
        Column("source", String, nullable=False),
        Column("reason", String, nullable=False),
        Column("payload", LargeBinary, nullable=False),
    )
    md.create_all(conn)


@migration
def m002_pipeline_tables(conn: Connection) -> None:
    md = MetaData()
    Table(
        "dataset_versions", md,
        Column("id", Integer, primary_key=True),
        Column("number", Integer, nullable=False, unique=True),
        Column("path", String, nullable=False),
        Column("content_hash", String, nullable=False),
        Column("trace_count", Integer, nullable=False),
        Column("train_count", Integer, nullable=False),
        Column("eval_count", Integer, nullable=False),
        Column("stats", JSON, nullable=False),
        Column("config", JSON, nullable=False),
        Column("created_at", DateTime, nullable=False),
    )
    Table(
        "training_runs", md,
        Column("id", Integer, primary_key=True),
        Column("phase", String, nullable=False),
        Column("status", String, nullable=False),
        Column("dataset_version_id", Integer, ForeignKey("dataset_versions.id")),
        Column("parent_run_id", Integer, ForeignKey("training_runs.id")),
        Column("base_model", String, nullable=False),
        Column("output_dir", String, nullable=False),
        Column("cycle", Integer),
        Column("config", JSON, nullable=False),
        Column("metrics", JSON, nullable=False),
        Column("error", String),
        Column("created_at", DateTime, nullable=False),
        Column("started_at", DateTime),
        Column("finished_at", DateTime),
    )
    Table(
        "model_versions", md,
        Column("id", Integer, primary_key=True),
        Column("number", Integer, nullable=False, unique=True),
        Column("status", String, nullable=False),
        Column("sft_run_id", Integer, ForeignKey("training_runs.id")),
        Column("rl_run_id", Integer, ForeignKey("training_runs.id")),
        Column("dataset_version_id", Integer, ForeignKey("dataset_versions.id")),
        Column("base_model", String, nullable=False),
        Column("gguf_path", String),
        Column("gguf_sha256", String),
        Column("quant", String),
        Column("size_bytes", Integer),
        Column("ollama_tag", String),
        Column("metrics", JSON, nullable=False),
        Column("gate", JSON, nullable=False),
        Column("created_at", DateTime, nullable=False),
        Column("deployed_at", DateTime),
    )
    md.create_all(conn)


@migration
def m003_cycles(conn: Connection) -> None:
    """The agent's persisted cycle state machine."""
    md = MetaData()
    # The tables its foreign keys point at, as they are in the database.
    md.reflect(conn, only=["dataset_versions", "training_runs", "model_versions"])
    Table(
        "cycles", md,
        Column("id", Integer, primary_key=True),
        Column("number", Integer, nullable=False, unique=True),
        Column("status", String, nullable=False, index=True),
        Column("outcome", String),
        Column("step", String),
        Column("trigger", String, nullable=False),
        Column("steps", JSON, nullable=False),
        Column("usable_traces", Integer, nullable=False),
        Column("new_traces", Integer, nullable=False),
        Column("trace_watermark", Integer),
        Column("dataset_version_id", Integer, ForeignKey("dataset_versions.id")),
        Column("sft_run_id", Integer, ForeignKey("training_runs.id")),
        Column("rl_run_id", Integer, ForeignKey("training_runs.id")),
        Column("model_version_id", Integer, ForeignKey("model_versions.id")),
        Column("config", JSON, nullable=False),
        Column("error", String),
        Column("next_attempt_at", DateTime),
        Column("child_pid", Integer),
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime, nullable=False),
        Column("finished_at", DateTime),
    )
    md.tables["cycles"].create(conn)


@migration
def m004_evaluations_and_ab_votes(conn: Connection) -> None:
    """Offline evaluation results (one row per model or baseline scored) and blind A/B votes."""
    md = MetaData()
    md.reflect(conn, only=["dataset_versions", "training_runs", "model_versions"])
    Table(
        "evaluations", md,
        Column("id", Integer, primary_key=True),
        Column("dataset_version_id", Integer, ForeignKey("dataset_versions.id"), index=True),
        Column("model_version_id", Integer, ForeignKey("model_versions.id"), index=True),
        Column("training_run_id", Integer, ForeignKey("training_runs.id"), index=True),
        Column("subject", String, nullable=False),
        Column("kind", String, nullable=False),
        Column("backend", String, nullable=False),
        Column("model_path", String),
        Column("weights_sha256", String),
        Column("metrics", JSON, nullable=False),
        Column("config", JSON, nullable=False),
        Column("details_path", String),
        Column("seconds", Float, nullable=False),
        Column("created_at", DateTime, nullable=False),
    )
    Table(
        "ab_votes", md,
        Column("id", Integer, primary_key=True),
        Column("evaluation_id", Integer, ForeignKey("evaluations.id"), nullable=False, index=True),
        Column("model_version_id", Integer, ForeignKey("model_versions.id")),
        Column("training_run_id", Integer, ForeignKey("training_runs.id")),
        Column("trace_id", Integer),
        Column("claude_position", Integer, nullable=False),
        Column("guess", Integer, nullable=False),
        Column("correct", Boolean, nullable=False),
        Column("seconds", Float),
        Column("created_at", DateTime, nullable=False),
    )
    md.tables["evaluations"].create(conn)
    md.tables["ab_votes"].create(conn)


@migration
def m005_purged_sessions(conn: Connection) -> None:
    """Tombstones of purged sessions, so a later ingest or import does not resurrect them."""
    md = MetaData()
    Table(
        "purged_sessions", md,
        Column("session_id", String, primary_key=True),
        Column("before", DateTime),
        Column("purged_at", DateTime, nullable=False),
    )
    md.create_all(conn)


# The tables whose rows come from one member's machine (see m006_member_origin).
ORIGIN_TABLES = ("sessions", "traces", "hook_events", "quarantine")


@migration
def m006_member_origin(conn: Connection) -> None:
    """Who and which machine each captured row came from (a team shares one store): the
    member's user name and the host's name on sessions, traces, hook events and quarantined
    input. Rows stored before are left NULL (unknown: they predate sharing)."""
    for table in ORIGIN_TABLES:
        for column in ("user_name", "hostname"):
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} VARCHAR"))
    conn.execute(text("CREATE INDEX ix_traces_user_name ON traces (user_name)"))
    conn.execute(text("CREATE INDEX ix_hook_events_hostname ON hook_events (hostname)"))


@migration
def m007_postgres_column_types(conn: Connection) -> None:
    """On PostgreSQL, the column types ``models.py`` declares, where the first migrations'
    generic types gave others (SQLite, which has one type for each, is left as it is):

    - every datetime as ``timestamp with time zone``: sqlmodel's datetime type is time-zone
      aware, and the stored naive values were UTC (``AT TIME ZONE 'UTC'`` keeps each instant);
    - ``model_versions.size_bytes`` as ``bigint``: a GGUF over 2 GiB overflows ``integer``.

    Changed after it shipped, because it was harmful: it altered every table in the schema,
    other applications' included (a shared database), and wrote their names unquoted (a
    mixed-case name failed the whole migration). It now alters only ccrl's own tables (the
    names ``models.py`` declares), identifiers quoted; on ccrl's tables the effect is the same.
    """
    if conn.dialect.name != "postgresql":
        return
    quote = conn.dialect.identifier_preparer.quote_identifier
    insp = inspect(conn)
    for table in sorted(set(insp.get_table_names()) & ccrl_table_names()):
        for column in insp.get_columns(table):
            kind = column["type"]
            if isinstance(kind, DateTime) and not getattr(kind, "timezone", False):
                name = quote(column["name"])
                conn.execute(text(f"ALTER TABLE {quote(table)} ALTER COLUMN {name} TYPE TIMESTAMP WITH TIME ZONE "
                                  f"USING {name} AT TIME ZONE 'UTC'"))
    conn.execute(text("ALTER TABLE model_versions ALTER COLUMN size_bytes TYPE BIGINT"))


@migration
def m008_trace_cycle_coverage(conn: Connection) -> None:
    """``traces.covered_by_cycle``: the cycle whose dataset first covered the trace (NULL: none
    yet, so the next cycle's threshold counts it). Ids are no arrival order on a store several
    agents write at once (a trace may commit after one with a higher id), and SQLite reuses the
    ids of purged newest rows, so a cycle no longer counts traces above an id watermark. The
    traces the latest cycle's watermark covered, except those still open (their turn completes
    later and counts then), are marked as covered by that cycle."""
    conn.execute(text("ALTER TABLE traces ADD COLUMN covered_by_cycle INTEGER"))
    conn.execute(text("CREATE INDEX ix_traces_covered_by_cycle ON traces (covered_by_cycle)"))
    last = conn.execute(text("SELECT number, trace_watermark FROM cycles WHERE trace_watermark IS NOT NULL "
                             "ORDER BY number DESC LIMIT 1")).first()
    if last is not None:
        conn.execute(text("UPDATE traces SET covered_by_cycle = :number WHERE id <= :watermark AND status <> 'open'"),
                     {"number": last[0], "watermark": last[1]})


@migration
def m009_tool_call_error_index(conn: Connection) -> None:
    """An index on ``tool_calls.is_error``: ``ccrl status`` counts the failed tool calls, and
    without it that COUNT reads every tool call, outputs included (SQLite follows each long
    output's overflow pages to reach the column stored after it)."""
    conn.execute(text("CREATE INDEX ix_tool_calls_is_error ON tool_calls (is_error)"))


def _migrations_table(md: MetaData) -> Table:
    return Table(
        MIGRATIONS_TABLE, md,
        Column("name", String, primary_key=True),
        Column("applied_at", Float, nullable=False),
    )


def applied(conn: Connection) -> list[str]:
    if not inspect(conn).has_table(MIGRATIONS_TABLE):
        return []
    table = _migrations_table(MetaData())
    return [row[0] for row in conn.execute(table.select())]


def migrate(engine: Engine, upto: str | None = None) -> list[str]:
    """Apply every migration not yet applied (up to and including ``upto``), each in one
    transaction with its version record, checked and applied under the migration lock
    (``ccrl.agent.store.migration_transactions``). A store with nothing pending is only read: a
    command starting while the agent writes does not wait for the write lock. Returns the names
    applied now."""
    names = [name for name, _ in MIGRATIONS]
    wanted = names[: names.index(upto) + 1] if upto in names else names
    with engine.connect() as conn:  # the usual case, every start: nothing to do, and no write lock
        if set(wanted) <= set(applied(conn)):
            return []
    done_now: list[str] = []
    table = _migrations_table(MetaData())
    with migration_connection(engine) as conn:
        with locked_transaction(conn):
            table.create(conn, checkfirst=True)
        for name, fn in MIGRATIONS:
            with locked_transaction(conn):
                if name not in applied(conn):
                    with pause_point(conn, name):
                        fn(conn)
                    conn.execute(table.insert().values(name=name, applied_at=time.time()))
                    done_now.append(name)
            if name == upto:
                break
    return done_now
