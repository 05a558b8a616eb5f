"""``ccrl status`` on a real store, inbox and spool dirs: counts, pending events, last capture,
hooks, the stable JSON keys, a masked database password, and no heavy imports."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ccrl.agent.cli import app
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import HookEvent, Quarantine, Session, ToolCall, Trace
from ccrl.hooks.inbox import INSERT_SQL, ensure_inbox

TOP_KEYS = {"data_dir", "database_url", "store", "pending", "last_capture_at", "hooks", "agent"}
STORE_KEYS = {"sessions", "traces", "subagent_traces", "tool_calls", "tool_errors", "hook_events", "quarantined",
              "last_event_at", "error"}
PENDING_KEYS = {"inbox", "spool", "total", "newest_at", "error"}
SCOPE_KEYS = {"scope", "path", "exists", "installed", "events", "missing_events", "commands", "interpreters",
              "missing_files", "homes", "legacy", "runnable", "up_to_date", "hooks_disabled", "error"}


def at(month: int, day: int, hour: int = 10) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=timezone.utc)


@pytest.fixture
def home(tmp_path, monkeypatch, ccrl_home) -> Path:
    user_home = tmp_path / "user"
    user_home.mkdir()
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # keep the /tmp spool dir per test
    monkeypatch.chdir(tmp_path)
    return user_home


@pytest.fixture
def filled(home, ccrl_home) -> Path:
    """2 sessions, 3 traces (1 subagent), 4 tool calls (1 failed), 2 hook events (newest 3 March),
    1 quarantined item; 3 inbox rows (newest 5 March); 3 spool files (newest 6 March) in two
    spool dirs, one of them left unfinished long ago; not counted: a temp file being written, a
    stray file, and a look-alike spool dir that is a symlink."""
    with session_scope() as db:
        db.add_all([Session(id="s1", created_at=at(3, 1), updated_at=at(3, 1)),
                    Session(id="s2", created_at=at(3, 2), updated_at=at(3, 2))])
        db.flush()
        t1 = Trace(session_id="s1", key="k1", created_at=at(3, 1), updated_at=at(3, 1))
        t2 = Trace(session_id="s2", key="k1", created_at=at(3, 2), updated_at=at(3, 2))
        db.add_all([t1, t2])
        db.flush()
        sub = Trace(session_id="s1", key="agent", parent_id=t1.id, created_at=at(3, 1), updated_at=at(3, 1))
        db.add(sub)
        db.flush()
        db.add_all([
            ToolCall(trace_id=t1.id, tool_use_id="a", name="Read"),
            ToolCall(trace_id=t1.id, tool_use_id="b", name="Bash", is_error=True),
            ToolCall(trace_id=t2.id, tool_use_id="c", name="Edit"),
            ToolCall(trace_id=sub.id, tool_use_id="d", name="Grep"),
            HookEvent(event_key="e1", received_at=at(3, 1), event="Stop", session_id="s1"),
            HookEvent(event_key="e2", received_at=at(3, 3), event="Stop", session_id="s2"),
            Quarantine(received_at=at(3, 2), source="inbox", reason="not JSON", payload=b"{oops"),
        ])
    ensure_inbox(str(ccrl_home / "inbox.db"))
    conn = sqlite3.connect(ccrl_home / "inbox.db")
    with conn:
        for day in (4, 5, 3):
            conn.execute(INSERT_SQL, (at(3, day).timestamp(), b'{"session_id": "s3"}'))
    conn.close()
    runtime_spool = Path(os.environ["XDG_RUNTIME_DIR"]) / "ccrl-spool"
    for directory, day in ((ccrl_home / "spool", 4), (runtime_spool, 6)):
        directory.mkdir(parents=True)
        (directory / f"{int(at(3, day).timestamp() * 1_000_000)}-1-aa.event").write_bytes(b"{}")
    (ccrl_home / "spool" / ".99-1-bb.event.tmp").write_bytes(b"{}")
    (runtime_spool / "README").write_text("not an event")
    # Left unfinished an hour ago (the hook was killed before its rename): pending all the same.
    stale = ccrl_home / "spool" / f".{int(at(3, 2).timestamp() * 1_000_000)}-2-cc.event.tmp"
    stale.write_bytes(b"{}")
    os.utime(stale, (at(3, 2).timestamp(), at(3, 2).timestamp()))
    # The shared /tmp spool dir is a symlink to files that are not ours: not counted.
    elsewhere = ccrl_home.parent / "not-mine"
    elsewhere.mkdir()
    (elsewhere / f"{int(at(3, 9).timestamp() * 1_000_000)}-1-aa.event").write_bytes(b"{}")
    (ccrl_home.parent / "tmp").mkdir()
    (ccrl_home.parent / "tmp" / f"ccrl-spool-{os.getuid()}").symlink_to(elsewhere)
    return ccrl_home


def status_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["status", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_json_counts_and_keys(filled):
    info = status_json()
    assert set(info) == TOP_KEYS
    assert set(info["store"]) == STORE_KEYS and set(info["pending"]) == PENDING_KEYS
    assert set(info["hooks"]) == {"user", "project", "local"}
    assert all(set(scope) == SCOPE_KEYS for scope in info["hooks"].values())
    assert info["data_dir"] == str(filled)
    assert info["database_url"] == f"sqlite:///{filled / 'ccrl.db'}"
    assert {k: v for k, v in info["store"].items() if k not in ("last_event_at", "error")} == {
        "sessions": 2, "traces": 3, "subagent_traces": 1, "tool_calls": 4, "tool_errors": 1,
        "hook_events": 2, "quarantined": 1,
    }
    assert info["store"]["error"] is None
    assert datetime.fromisoformat(info["store"]["last_event_at"]) == at(3, 3)
    assert {k: info["pending"][k] for k in ("inbox", "spool", "total", "error")} == {
        "inbox": 3, "spool": 3, "total": 6, "error": None}
    assert datetime.fromisoformat(info["pending"]["newest_at"]) == at(3, 6)
    assert datetime.fromisoformat(info["last_capture_at"]) == at(3, 6)
    assert not any(scope["installed"] for scope in info["hooks"].values())


def test_status_shows_installed_hooks(filled, home):
    assert CliRunner().invoke(app, ["hooks", "install"]).exit_code == 0
    hooks = status_json()["hooks"]
    assert hooks["user"]["installed"] and hooks["user"]["runnable"] and hooks["user"]["up_to_date"]
    assert hooks["user"]["path"] == str(home / ".claude" / "settings.json")
    assert not hooks["project"]["installed"] and not hooks["local"]["installed"]


def test_status_table(filled):
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("sessions", "3 (1 subagent)", "4 (1 error)", "6 (inbox 3, spool 3)", "quarantined",
                 "not installed", "2026-03-06"):
        assert text in out
    # Long paths fold onto several lines instead of being cut.
    assert str(filled) in "".join(line.strip("│ ") for line in out.splitlines())


def test_status_of_a_new_data_dir(home, ccrl_home):
    info = status_json()
    assert info["store"]["sessions"] == 0 and info["store"]["traces"] == 0
    assert info["pending"] == {"inbox": 0, "spool": 0, "total": 0, "newest_at": None, "error": None}
    assert info["last_capture_at"] is None


def test_database_password_is_masked_even_when_the_store_is_unreachable(home, ccrl_home, monkeypatch):
    from ccrl.agent.core.config import reset_settings_cache

    monkeypatch.setenv("CCRL_DATABASE_URL", "postgresql://ccrl:hunter2@127.0.0.1:9/ccrl")
    reset_settings_cache()
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 1
    assert "hunter2" not in result.output
    info = json.loads(result.stdout)
    assert info["database_url"] == "postgresql://ccrl:***@127.0.0.1:9/ccrl"
    assert info["store"]["sessions"] is None and "cannot read the store" in info["store"]["error"]
    table = CliRunner().invoke(app, ["status"])
    assert table.exit_code == 1 and "hunter2" not in table.output and "Traceback" not in table.output


def test_status_imports_no_heavy_ml_library(filled):
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from ccrl.agent.cli import app\n"
        "result = CliRunner().invoke(app, ['status', '--json'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = ('torch', 'transformers', 'datasets', 'trl', 'peft', 'accelerate')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
