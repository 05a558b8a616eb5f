"""``ccrl purge``: each mode removes exactly its data (store rows, inbox rows, spool files,
quarantine) and nothing else, and the deleted text is gone from the SQLite files on disk.

What is left is read back with plain sqlite3 and directory listings, not with the purge code.
"""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from ccrl.agent.cli import app
from ccrl.agent.store.db import dispose_engines, session_scope
from ccrl.agent.store.models import HookEvent, Quarantine, Session, ToolCall, Trace
from ccrl.hooks.inbox import INSERT_SQL, ensure_inbox

S1, S2, S3, S4 = "sess-1-proj-a", "sess-2-proj-a-sub", "sess-3-proj-ab", "sess-4-pending-only"
SECRET = "PURGE-ME-7f3a9c41"  # text that must not survive on disk after purging session 1

COUNT_KEYS = {"sessions", "traces", "tool_calls", "hook_events", "quarantined", "inbox_events", "spool_files"}


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=timezone.utc)


def event(session_id: str, cwd: str, name: str = "PostToolUse", **extra: object) -> dict:
    return {"session_id": session_id, "cwd": cwd, "hook_event_name": name,
            "transcript_path": f"/home/u/.claude/projects/x/{session_id}.jsonl", **extra}


@pytest.fixture
def store(ccrl_home, tmp_path, monkeypatch) -> dict:
    """Three ingested sessions and pending events:

    - S1 in /work/proj-a (January): trace t1 (2 tool calls) with subagent trace t2 (1 call),
      2 hook events, a quarantined event of S1 and a corrupt line of its transcript (February),
      an inbox row of S1.
    - S2 in /work/proj-a/sub (February): t3 (1 call), 1 hook event, a spool file.
    - S3 in /work/proj-ab (March; a sibling, not below proj-a): t4, 1 hook event, a spool file
      in the runtime spool dir.
    - An unfinished spool file of S1 from January (stale); a fresh one (in flight); a look-alike
      spool dir (symlink) with an S1 event that is not ours to touch.
    - S4 only pending, cwd /work/proj-a/x (March inbox row); an unparseable inbox row (January);
      unparseable quarantined bytes (March).
    """
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # keep the /tmp spool dir per test
    ids: dict = {}
    with session_scope() as db:
        for sid, path, month in ((S1, "/work/proj-a", 1), (S2, "/work/proj-a/sub", 2), (S3, "/work/proj-ab", 3)):
            db.add(Session(id=sid, project_path=path, started_at=at(month, 10), created_at=at(month, 10),
                           updated_at=at(month, 10)))
        db.flush()
        t1 = Trace(session_id=S1, key="p1", prompt=f"deploy with token {SECRET}", cwd="/work/proj-a",
                   started_at=at(1, 10), created_at=at(1, 10), updated_at=at(1, 10))
        db.add(t1)
        db.flush()
        t2 = Trace(session_id=S1, key="agent-x", parent_id=t1.id, prompt="subtask", cwd="/work/proj-a",
                   started_at=at(1, 10, 13), created_at=at(1, 10, 13), updated_at=at(1, 10, 13))
        t3 = Trace(session_id=S2, key="p1", prompt="refactor", cwd="/work/proj-a/sub",
                   started_at=at(2, 10), created_at=at(2, 10), updated_at=at(2, 10))
        t4 = Trace(session_id=S3, key="p1", prompt="docs", cwd="/work/proj-ab",
                   started_at=at(3, 10), created_at=at(3, 10), updated_at=at(3, 10))
        db.add_all([t2, t3, t4])
        db.flush()
        db.add_all([
            ToolCall(trace_id=t1.id, tool_use_id="tu1", seq=0, name="Bash", output=f"echo {SECRET}"),
            ToolCall(trace_id=t1.id, tool_use_id="tu2", seq=1, name="Read", output="ok"),
            ToolCall(trace_id=t2.id, tool_use_id="tu3", seq=0, name="Grep", output="ok"),
            ToolCall(trace_id=t3.id, tool_use_id="tu4", seq=0, name="Edit", output="ok"),
        ])
        for key, sid, cwd, when in (("e1", S1, "/work/proj-a", at(1, 10)), ("e2", S1, "/work/proj-a", at(1, 10, 14)),
                                     ("e3", S2, "/work/proj-a/sub", at(2, 10)), ("e4", S3, "/work/proj-ab", at(3, 10))):
            db.add(HookEvent(event_key=key, received_at=when, event="PostToolUse", session_id=sid,
                             payload=event(sid, cwd, prompt=SECRET if sid == S1 else "")))
        db.add(Quarantine(received_at=at(1, 5), source="inbox", reason="unknown event",
                          payload=json.dumps(event(S1, "/work/proj-a", "Weird")).encode()))
        db.add(Quarantine(received_at=at(3, 1), source="spool", reason="not JSON", payload=b"\x00\xffgarbage"))
        # A corrupt line of S1's transcript: unparseable, but its file name says whose it is.
        db.add(Quarantine(received_at=at(2, 15), source=f"/home/u/.claude/projects/-work-proj-a/{S1}.jsonl",
                          reason="corrupt transcript line", payload=b'{"type": "assistant", "mess'))
        ids.update(t1=t1.id, t2=t2.id, t3=t3.id, t4=t4.id)

    inbox = ccrl_home / "inbox.db"
    ensure_inbox(str(inbox))
    conn = sqlite3.connect(inbox)
    with conn:
        conn.execute(INSERT_SQL, (at(1, 11).timestamp(), json.dumps(event(S1, "/work/proj-a", prompt=SECRET)).encode()))
        conn.execute(INSERT_SQL, (at(3, 11).timestamp(), json.dumps(event(S4, "/work/proj-a/x")).encode()))
        conn.execute(INSERT_SQL, (at(1, 1).timestamp(), b"{not json"))
    conn.close()

    def spool(directory: Path, when: datetime, payload: dict) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{int(when.timestamp() * 1_000_000)}-4242-abcd0123.event"
        path.write_bytes(json.dumps(payload).encode())
        return path

    ids["spool_s2"] = spool(ccrl_home / "spool", at(2, 11), event(S2, "/work/proj-a/sub"))
    ids["spool_s3"] = spool(Path(os.environ["XDG_RUNTIME_DIR"]) / "ccrl-spool", at(3, 12), event(S3, "/work/proj-ab"))
    # A spool file still being written (dot-prefixed temp name) is not an event yet...
    ids["spool_tmp"] = ccrl_home / "spool" / ".123-1-ff.event.tmp"
    ids["spool_tmp"].write_bytes(b"{}")
    # ...but one left unfinished an hour ago (the hook was killed before its rename) is S1's data.
    stale = ccrl_home / "spool" / f".{int(at(1, 20).timestamp() * 1_000_000)}-7-ee.event.tmp"
    stale.write_bytes(json.dumps(event(S1, "/work/proj-a")).encode())
    os.utime(stale, (at(1, 20).timestamp(), at(1, 20).timestamp()))
    ids["spool_stale"] = stale
    # The shared /tmp spool dir is a symlink to someone else's files: never read or deleted.
    elsewhere = tmp_path / "not-mine"
    elsewhere.mkdir()
    (elsewhere / "1-1-aa.event").write_bytes(json.dumps(event(S1, "/work/proj-a")).encode())
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / f"ccrl-spool-{os.getuid()}").symlink_to(elsewhere)
    ids["not_mine"] = elsewhere / "1-1-aa.event"
    ids["home"] = ccrl_home
    return ids


def left(home: Path) -> dict:
    """What remains, read with plain sqlite3 and directory listings."""
    dispose_engines()
    db = sqlite3.connect(home / "ccrl.db")
    inbox = sqlite3.connect(home / "inbox.db")
    try:
        remaining = {
            "sessions": {r[0] for r in db.execute("SELECT id FROM sessions")},
            "traces": {r[0] for r in db.execute("SELECT id FROM traces")},
            "tool_calls": {r[0] for r in db.execute("SELECT tool_use_id FROM tool_calls")},
            "hook_events": {r[0] for r in db.execute("SELECT event_key FROM hook_events")},
            "quarantined": {r[0] for r in db.execute("SELECT reason FROM quarantine")},
            "inbox": {r[0] for r in inbox.execute("SELECT payload FROM inbox")},
        }
    finally:
        db.close()
        inbox.close()
    remaining["spool"] = {
        p.name for d in (home / "spool", Path(os.environ["XDG_RUNTIME_DIR"]) / "ccrl-spool") if d.exists()
        for p in d.iterdir()
    }
    return remaining


def inbox_sessions(payloads: set) -> set:
    found = set()
    for raw in payloads:
        try:
            found.add(json.loads(raw)["session_id"])
        except ValueError:
            found.add("<unparseable>")
    return found


def purge(*args: str):
    result = CliRunner().invoke(app, ["purge", *args])
    return result


def purge_json(*args: str) -> dict:
    result = purge(*args, "--yes", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"target", "dry_run", "counts", "vacuumed", "notes", "store", "remains", "transcripts",
                         "derived"}
    assert set(data["counts"]) == COUNT_KEYS
    return data


def test_purge_session(store):
    data = purge_json("--session", S1)
    assert data["target"] == "session" and data["dry_run"] is False
    assert data["counts"] == {"sessions": 1, "traces": 2, "tool_calls": 3, "hook_events": 2, "quarantined": 2,
                              "inbox_events": 1, "spool_files": 1}
    assert data["vacuumed"] == ["store", "inbox"]
    assert data["store"] == {"dialect": "sqlite", "compacted": True, "not_reclaimed": []}
    assert any(line.startswith("store and inbox compacted (SQLite VACUUM") for line in data["remains"])
    assert data["derived"]["found"]["counts"] == {"dataset_versions": 0, "training_runs": 0, "model_versions": 0,
                                                  "ollama_tags": 0, "evaluations": 0, "ab_votes": 0}
    assert data["derived"]["command"] is None
    rest = left(store["home"])
    assert rest["sessions"] == {S2, S3}
    assert rest["traces"] == {store["t3"], store["t4"]}
    assert rest["tool_calls"] == {"tu4"}
    assert rest["hook_events"] == {"e3", "e4"}
    assert rest["quarantined"] == {"not JSON"}
    assert inbox_sessions(rest["inbox"]) == {S4, "<unparseable>"}
    assert rest["spool"] == {store["spool_s2"].name, store["spool_s3"].name, store["spool_tmp"].name}
    assert store["not_mine"].exists()


def test_purge_project_matches_the_path_and_below_but_not_siblings(store):
    data = purge_json("--project", "/work/proj-a/")
    assert data["counts"] == {"sessions": 2, "traces": 3, "tool_calls": 4, "hook_events": 3, "quarantined": 2,
                              "inbox_events": 2, "spool_files": 2}
    rest = left(store["home"])
    assert rest["sessions"] == {S3}
    assert rest["traces"] == {store["t4"]}
    assert rest["tool_calls"] == set()
    assert rest["hook_events"] == {"e4"}
    assert rest["quarantined"] == {"not JSON"}
    assert inbox_sessions(rest["inbox"]) == {"<unparseable>"}
    assert rest["spool"] == {store["spool_s3"].name, store["spool_tmp"].name}


def test_purge_before_a_date(store):
    data = purge_json("--before", "2026-02-01")
    # January: t1 and its subagent t2 (3 tool calls), session S1 (no trace left), S1's two hook
    # events, the January quarantine item, the January inbox rows (S1's and the unparseable
    # one), the stale unfinished spool file.
    assert data["counts"] == {"sessions": 1, "traces": 2, "tool_calls": 3, "hook_events": 2, "quarantined": 1,
                              "inbox_events": 2, "spool_files": 1}
    rest = left(store["home"])
    assert rest["sessions"] == {S2, S3}
    assert rest["traces"] == {store["t3"], store["t4"]}
    assert rest["hook_events"] == {"e3", "e4"}
    assert rest["quarantined"] == {"not JSON", "corrupt transcript line"}
    assert inbox_sessions(rest["inbox"]) == {S4}
    assert rest["spool"] == {store["spool_s2"].name, store["spool_s3"].name, store["spool_tmp"].name}


def test_purge_before_keeps_a_session_that_still_has_later_traces(store):
    with session_scope() as db:
        db.add(Trace(session_id=S1, key="p2", prompt="later", started_at=at(2, 20), created_at=at(2, 20),
                     updated_at=at(2, 20)))
    data = purge_json("--before", "2026-02-01T00:00:00+00:00")
    assert data["counts"]["sessions"] == 0 and data["counts"]["traces"] == 2
    assert S1 in left(store["home"])["sessions"]


def test_purge_all(store):
    data = purge_json("--all")
    assert data["counts"] == {"sessions": 3, "traces": 4, "tool_calls": 4, "hook_events": 4, "quarantined": 3,
                              "inbox_events": 3, "spool_files": 3}
    rest = left(store["home"])
    assert all(not rest[key] for key in ("sessions", "traces", "tool_calls", "hook_events", "quarantined", "inbox"))
    assert rest["spool"] == {store["spool_tmp"].name}
    assert store["not_mine"].exists()
    # Nothing left: a second purge says so and removes nothing.
    again = purge_json("--all")
    assert not any(again["counts"].values())


def test_deleted_text_is_gone_from_the_files_on_disk(store):
    home = store["home"]
    files = [home / name for name in ("ccrl.db", "ccrl.db-wal", "inbox.db", "inbox.db-wal")]

    def on_disk() -> bool:
        return any(SECRET.encode() in p.read_bytes() for p in files if p.exists())

    dispose_engines()
    assert on_disk()  # the check can fail: the secret really is in the files before
    purge_json("--session", S1)
    dispose_engines()
    assert not on_disk()
    # The rest of the store is intact and readable.
    assert left(home)["sessions"] == {S2, S3}


def test_dry_run_removes_nothing(store):
    before = left(store["home"])
    result = purge("--project", "/work/proj-a", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["counts"]["sessions"] == 2
    assert left(store["home"]) == before


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one of"),
        (["--session", S1, "--all"], "exactly one of"),
        (["--before", "last tuesday"], "is not a date"),
    ],
)
def test_bad_requests_are_refused(store, args, message):
    before = left(store["home"])
    result = purge(*args, "--yes")
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert left(store["home"]) == before


def test_without_yes_on_a_non_interactive_stdin_it_refuses(store):
    before = left(store["home"])
    result = purge("--all")
    assert result.exit_code == 1
    assert "--yes" in result.stderr
    assert left(store["home"]) == before


def test_the_text_summary_says_what_was_removed_and_what_remains(store):
    result = purge("--session", S1, "--yes")
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert f"Removed everything of session {S1}:" in out
    assert "Compacted: store, inbox (deleted text no longer on disk)." in out
    assert "What remains: store and inbox compacted (SQLite VACUUM" in out


def test_nothing_matching_is_not_an_error(store):
    result = purge("--session", "no-such-session")
    assert result.exit_code == 0
    assert "Nothing to remove" in result.stdout


def _ccrl_on_a_terminal(args: list[str], answer: bytes) -> subprocess.CompletedProcess:
    """Run the real ``ccrl`` with a pseudo-terminal as stdin and type ``answer``."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from ccrl.agent.cli import main; main()", *args],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        os.close(slave)
        os.write(master, answer)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


def test_asks_on_a_terminal_and_purges_on_yes(store):
    dispose_engines()
    result = _ccrl_on_a_terminal(["purge", "--session", S1], b"y\n")
    assert result.returncode == 0, result.stderr
    assert "Delete this for good?" in result.stderr
    assert S1 not in left(store["home"])["sessions"]


def test_asks_on_a_terminal_and_keeps_everything_on_no(store):
    before = left(store["home"])
    result = _ccrl_on_a_terminal(["purge", "--all"], b"n\n")
    assert result.returncode == 1
    assert "Nothing removed" in result.stderr
    assert left(store["home"]) == before


def test_ingest_stops_watching_purged_sessions_and_sees_new_events(store):
    """Ingest's bookkeeping must agree with the purged store: no transcript watch or retry for
    purged sessions, and a last-seen event id no higher than what is left (SQLite reuses the
    ids of deleted top rows, and ingest would skip new events that got them)."""
    from ccrl.agent.capture.ingest import STATE_FILE

    state_path = store["home"] / STATE_FILE
    watched = {sid: {"path": f"/home/u/.claude/projects/x/{sid}.jsonl", "signature": None, "missing_since": None}
               for sid in (S1, S2, S3)}
    state_path.write_text(json.dumps({"last_event_id": 4, "transcripts": watched, "failed": [S1, S3]}))

    purge_json("--session", S1)
    state = json.loads(state_path.read_text())
    assert set(state["transcripts"]) == {S2, S3} and state["failed"] == [S3]
    assert state["last_event_id"] == 4  # S1's events were not the newest: nothing to lower

    purge_json("--all")
    state = json.loads(state_path.read_text())
    assert state == {"last_event_id": 0, "transcripts": {}, "failed": []}
    with session_scope() as db:
        db.add(HookEvent(event_key="new", received_at=at(4, 1), event="Stop", session_id="s-new", payload={}))
    with session_scope() as db:
        new_id = db.exec(select(HookEvent.id).where(HookEvent.event_key == "new")).one()
    assert new_id > state["last_event_id"]


def test_purge_waits_for_ingest_and_says_so_when_it_does_not_finish(store):
    from ccrl.agent.capture.ingest import LOCK_FILE
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.core.lock import FileLock
    from ccrl.agent.operations.purge import PurgeError, PurgeTarget, execute_purge

    before = left(store["home"])
    with FileLock(store["home"] / LOCK_FILE, name="ingest").hold("ingest"):
        with pytest.raises(PurgeError, match="ingest is running"):
            execute_purge(get_settings(), PurgeTarget(mode="all"), lock_timeout=0.3)
    assert left(store["home"]) == before


def test_purge_of_many_traces_across_batches_keeps_foreign_keys_happy(store):
    """More traces than one DELETE batch holds, with subagent traces pointing at a parent in
    another batch (foreign keys are enforced)."""
    with session_scope() as db:
        db.add(Session(id="big", project_path="/work/big", created_at=at(4, 1), updated_at=at(4, 1)))
        db.flush()
        root = Trace(session_id="big", key="root", created_at=at(4, 1), updated_at=at(4, 1))
        db.add(root)
        db.flush()
        children = [Trace(session_id="big", key=f"agent-{i}", parent_id=root.id, created_at=at(4, 1),
                          updated_at=at(4, 1)) for i in range(1200)]
        db.add_all(children)
        db.flush()
        grandchild = Trace(session_id="big", key="deep", parent_id=children[-1].id, created_at=at(4, 1),
                           updated_at=at(4, 1))
        db.add(grandchild)
        db.flush()
        db.add_all([ToolCall(trace_id=c.id, tool_use_id=f"big-{i}", name="Read") for i, c in enumerate(children)])
    data = purge_json("--session", "big")
    assert data["counts"]["traces"] == 1202 and data["counts"]["tool_calls"] == 1200
    rest = left(store["home"])
    assert rest["sessions"] == {S1, S2, S3}
    assert rest["traces"] == {store["t1"], store["t2"], store["t3"], store["t4"]}
