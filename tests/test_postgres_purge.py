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
    from ccrl.agent.config import get_settings
    from ccrl.agent.drain import ensure_local_stores
    from ccrl.agent.ingest import ingest
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
    from ccrl.agent.db import get_engine

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
