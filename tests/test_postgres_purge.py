"""``ccrl purge`` on a store a team shares (PostgreSQL): a member purges their own data, from
any of their machines, and never another member's."""

from __future__ import annotations

import json

from sqlalchemy import text
from typer.testing import CliRunner

from postgres_helpers import pg_home, pg_server, pg_url  # noqa: F401  (fixtures)

T0 = 1_770_000_000.0  # 2026-02-02T02:40:00Z


def _capture(monkeypatch, member: str, host: str, session: str, cwd: str, start: float, prompts: int) -> None:
    """What ``member``'s hooks and agent on ``host`` do: append to the inbox, then ingest."""
    from ccrl.agent.capture.drain import ensure_local_stores
    from ccrl.agent.capture.ingest import ingest
    from ccrl.agent.core.config import get_settings
    from ccrl.hooks.inbox import append

    monkeypatch.setenv("CCRL_MEMBER", member)
    monkeypatch.setenv("CCRL_HOSTNAME", host)
    inbox = ensure_local_stores(get_settings())
    for n in range(prompts):
        payload = {"hook_event_name": "UserPromptSubmit", "session_id": session, "cwd": cwd, "prompt": f"{session} {n}"}
        append(str(inbox), start + n * 60, json.dumps(payload).encode())
    report = ingest(get_settings())
    assert report.errors == [] and report.drain["stored"] == prompts


def _counts(engine) -> dict[tuple[str, str], tuple[int, int, int]]:
    with engine.connect() as conn:
        out = {}
        for table in ("sessions", "traces", "hook_events"):
            for user, count in conn.execute(text(f"SELECT user_name, COUNT(*) FROM {table} GROUP BY 1")):
                out.setdefault(user, {})[table] = count
    return {user: (c.get("sessions", 0), c.get("traces", 0), c.get("hook_events", 0)) for user, c in out.items()}


def test_a_member_purges_only_their_own_data(pg_home, monkeypatch, tmp_path):
    from ccrl.agent.cli import app
    from ccrl.agent.store.db import get_engine

    project = str(tmp_path / "shared-project")  # both work in the same checkout path
    _capture(monkeypatch, "alice", "alice-laptop", "a1", project, T0, 3)
    _capture(monkeypatch, "alice", "alice-desktop", "a2", project, T0 + 3600, 2)
    _capture(monkeypatch, "bob", "bob-laptop", "b1", project, T0, 4)
    engine = get_engine()
    assert _counts(engine) == {"alice": (2, 5, 5), "bob": (1, 4, 4)}

    runner = CliRunner()
    monkeypatch.setenv("CCRL_MEMBER", "alice")
    monkeypatch.setenv("CCRL_HOSTNAME", "alice-laptop")
    preview = runner.invoke(app, ["purge", "--all", "--dry-run"])
    assert preview.exit_code == 0 and "of member alice only" in " ".join(preview.output.split())
    # bob's session, named by alice: not hers, nothing to remove
    other = runner.invoke(app, ["purge", "--session", "b1", "--yes", "--json"])
    assert other.exit_code == 0, other.output
    assert _counts(engine) == {"alice": (2, 5, 5), "bob": (1, 4, 4)}

    # --before: alice's turns before the cut-off, from both her machines; bob's stay
    before = runner.invoke(app, ["purge", "--before", "2026-02-02T03:00:00+00:00", "--yes", "--json"])
    assert before.exit_code == 0, before.output
    assert _counts(engine) == {"alice": (1, 2, 2), "bob": (1, 4, 4)}

    # --project: the path both worked in; only alice's part goes
    proj = runner.invoke(app, ["purge", "--project", project, "--yes", "--json"])
    assert proj.exit_code == 0, proj.output
    assert _counts(engine) == {"bob": (1, 4, 4)}

    # --all from bob's side: bob's data goes, tombstones are each member's own
    _capture(monkeypatch, "alice", "alice-laptop", "a3", project, T0 + 7200, 1)
    monkeypatch.setenv("CCRL_MEMBER", "bob")
    everything = runner.invoke(app, ["purge", "--all", "--yes", "--json"])
    assert everything.exit_code == 0, everything.output
    assert _counts(engine) == {"alice": (1, 1, 1)}
    with engine.connect() as conn:
        tombstones = set(conn.execute(text("SELECT session_id FROM purged_sessions")).scalars())
    assert tombstones == {"a1", "a2", "b1"}


def test_the_summary_says_what_postgresql_cannot_reclaim_and_it_is_true(pg_home, pg_server, monkeypatch):
    """The deleted rows really stay in the table file as dead tuples (read from the server's
    data directory) until VACUUM FULL, as the summary says; the summary names that, the WAL,
    replicas and backups, with what the server reports."""
    from ccrl.agent.cli import app
    from ccrl.agent.store.db import get_engine

    secret = "pg-dead-tuple-7c41e0"
    _capture(monkeypatch, "alice", "alice-laptop", "a1", "/work/p", T0, 1)
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(text("UPDATE traces SET prompt = :p"), {"p": f"deploy with {secret}"})

    def table_file_holds_it() -> bool:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("CHECKPOINT"))
            relative = conn.execute(text("SELECT pg_relation_filepath('traces')")).scalar()
        return secret.encode() in (pg_server.data / relative).read_bytes()

    assert table_file_holds_it()  # the check can fail: the text is in the file before the purge
    result = CliRunner().invoke(app, ["purge", "--session", "a1", "--yes", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"]["traces"] == 1 and data["vacuumed"] == ["inbox"]
    store = data["store"]
    assert store["dialect"] == "postgresql" and store["compacted"] is False
    assert store["archive_mode"] == "off" and store["replicas"] == 0  # what this test server reports
    not_reclaimed = " ".join(store["not_reclaimed"])
    assert "VACUUM FULL sessions, traces, tool_calls, hook_events, quarantine" in not_reclaimed
    assert "WAL segments written before the purge" in not_reclaimed
    assert "none connected now" in not_reclaimed and "logical replicas" in not_reclaimed
    assert "base backups and dumps" in not_reclaimed
    assert all(line.startswith("postgresql: ") for line in data["remains"])

    assert table_file_holds_it()  # deleted, yet still on disk: a dead tuple, as the summary says
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM FULL traces"))
    assert not table_file_holds_it()  # the command the summary gives does erase it

    _capture(monkeypatch, "alice", "alice-laptop", "a2", "/work/p", T0 + 600, 1)
    text_result = CliRunner().invoke(app, ["purge", "--session", "a2", "--yes"])
    assert text_result.exit_code == 0, text_result.output
    out = " ".join(text_result.stdout.split())
    assert "What remains: postgresql: dead tuples: PostgreSQL only marks deleted rows dead" in out
    assert "Compacted: inbox" in out


def test_on_a_shared_store_derived_says_which_dataset_rows_are_not_on_this_machine(pg_home, monkeypatch):
    """The trainer's dataset folders are on the trainer's machine: a member's purge cannot read
    them, and says so with where to run ``--derived`` instead of claiming nothing holds the data."""
    from ccrl.agent.cli import app
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import DatasetVersion

    _capture(monkeypatch, "alice", "alice-laptop", "a1", "/work/p", T0, 2)
    with session_scope() as db:
        db.add(DatasetVersion(number=1, path="/srv/trainer-box/ccrl/datasets/v1"))
    runner = CliRunner()
    preview = runner.invoke(app, ["purge", "--session", "a1", "--dry-run"])
    assert preview.exit_code == 0, preview.output
    note = " ".join(preview.stderr.split())
    assert "dataset v1: its rows are not on this machine (the store is shared: run `ccrl purge --derived` on the " \
           "machine that trains)" in note
    result = runner.invoke(app, ["purge", "--session", "a1", "--derived", "--yes", "--json"])
    assert result.exit_code == 0, result.output
    derived = json.loads(result.stdout)["derived"]
    assert derived["removed"] is True and derived["found"]["unreadable"][0]["number"] == 1
    assert any("not on this machine" in line for line in derived["remaining"])
