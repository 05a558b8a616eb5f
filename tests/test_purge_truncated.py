"""``ccrl purge --session/--project`` finds quarantined and truncated events too.

Events go through the installed hook command as Claude Code runs it and through the real
drain; a payload cut off mid-write (the hook killed, stdin closed early) or not UTF-8 is
quarantined without a parsed session or cwd, and purge must still match it by the session id
and cwd inside its raw bytes. What is left is read back with plain sqlite3.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ccrl.agent.capture.drain import drain, ensure_local_stores
from ccrl.agent.cli import app
from ccrl.agent.core.config import get_settings
from ccrl.agent.store.db import dispose_engines
from ccrl.hooks.capture import hook_command

S1, SUB, OTHER = "sess-trunc-1", "sess-trunc-sub", "sess-trunc-other"
SECRET = "zq-private-prompt-5e1d77"  # captured text that must not survive the purge on disk


def payload(session: str, cwd: str, prompt: str) -> bytes:
    return json.dumps({"session_id": session, "transcript_path": f"/home/u/.claude/projects/x/{session}.jsonl",
                       "cwd": cwd, "hook_event_name": "UserPromptSubmit", "prompt": prompt}).encode()


def hook(data: bytes) -> None:
    proc = subprocess.run(["/bin/sh", "-c", hook_command()], input=data, capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def quarantine() -> list[tuple[str, bytes]]:
    dispose_engines()
    db = sqlite3.connect(get_settings().home / "ccrl.db")
    try:
        return [(reason, bytes(data)) for reason, data in db.execute("SELECT reason, payload FROM quarantine")]
    finally:
        db.close()


def inbox_payloads() -> list[bytes]:
    db = sqlite3.connect(get_settings().inbox_path)
    try:
        return [bytes(r[0]) for r in db.execute("SELECT payload FROM inbox")]
    finally:
        db.close()


def purge_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["purge", *args, "--yes", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def captured(ccrl_home, tmp_path, monkeypatch) -> Path:
    """Quarantined by the drain: S1 cut off mid-prompt, S1 with a byte that is not UTF-8, SUB
    (in /work/proj-a/sub, known only from its broken event) cut off, OTHER (/work/proj-b) cut
    off, and an empty event (names nobody). Stored: one whole S1 event. Still pending after
    the drain: S1 cut off in the inbox, and S1 cut off in a spool file a killed hook left."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    settings = get_settings()
    ensure_local_stores(settings)
    hook(payload(S1, "/work/proj-a", f"deploy with {SECRET} " + "x" * 200)[:-60])
    hook(payload(S1, "/work/proj-a", "PLACEHOLDER").replace(b"PLACEHOLDER", SECRET.encode() + b" caf\xe9"))
    hook(payload(SUB, "/work/proj-a/sub", "refactor " + "y" * 100)[:-30])
    hook(payload(OTHER, "/work/proj-b", "docs " + "z" * 100)[:-30])
    hook(b"")
    hook(payload(S1, "/work/proj-a", f"whole event {SECRET}"))
    report = drain(settings)
    assert report.errors == [] and report.stored == 1 and report.quarantined == 5
    hook(payload(S1, "/work/proj-a", f"pending {SECRET} " + "w" * 100)[:-20])
    spool = settings.spool_dirs[0]
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "1770000000000000-4242-abcd0123.event").write_bytes(payload(S1, "/work/proj-a", SECRET * 3)[:-10])
    return settings.home


def test_session_purge_removes_its_truncated_and_quarantined_events(captured):
    assert len(quarantine()) == 5 and len(inbox_payloads()) == 1
    data = purge_json("--session", S1)
    assert data["counts"]["quarantined"] == 2
    assert data["counts"]["hook_events"] == 1
    assert data["counts"]["inbox_events"] == 1 and data["counts"]["spool_files"] == 1
    left = quarantine()
    assert len(left) == 3
    assert not any(S1.encode() in raw for _reason, raw in left)
    assert {SUB.encode() in raw or OTHER.encode() in raw or raw == b"" for _reason, raw in left} == {True}
    assert inbox_payloads() == [] and not any(get_settings().spool_dirs[0].iterdir())
    dispose_engines()
    for name in ("ccrl.db", "ccrl.db-wal", "inbox.db", "inbox.db-wal"):
        path = captured / name
        assert not path.exists() or SECRET.encode() not in path.read_bytes(), name
    # The empty event names nobody: the summary says it is left and what removes it.
    assert any("1 quarantined item(s) name no session" in line for line in data["remains"])


def test_project_purge_matches_a_session_known_only_from_its_broken_event(captured):
    data = purge_json("--project", "/work/proj-a")
    assert data["counts"]["quarantined"] == 3  # S1's two and SUB's
    left = quarantine()
    assert len(left) == 2 and any(OTHER.encode() in raw for _reason, raw in left)
    assert not any(SUB.encode() in raw or S1.encode() in raw for _reason, raw in left)


def test_dry_run_counts_the_truncated_events_and_removes_nothing(captured):
    result = CliRunner().invoke(app, ["purge", "--session", S1, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] and data["counts"]["quarantined"] == 2 and data["counts"]["spool_files"] == 1
    assert len(quarantine()) == 5 and len(inbox_payloads()) == 1
    assert os.listdir(get_settings().spool_dirs[0])
