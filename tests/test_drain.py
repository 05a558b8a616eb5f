"""The drain (ccrl.agent.capture.drain): inbox rows and spool files → HookEvent / Quarantine rows.

Everything runs on real SQLite files: the inbox is written with the hook's own functions
(``inbox.append`` / ``inbox.spool``), the store through ``get_engine``. Crash safety is checked
with a real process killed between the store commit and the inbox DELETE.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlmodel import Session as DBSession
from sqlmodel import select

from ccrl.agent.capture.drain import DrainReport, drain, ensure_local_stores, event_key, parse_event
from ccrl.agent.core.config import get_settings
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import HookEvent, Quarantine
from ccrl.hooks import inbox, paths
from ccrl.hooks.handler import REDACTION_FAILED
from conftest import HOOK_PAYLOADS


@pytest.fixture
def home(ccrl_home, tmp_path, monkeypatch) -> Path:
    """A data dir with the inbox set up, and a private TMPDIR so the /tmp spool dir is ours."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ensure_local_stores()
    return ccrl_home


def add_row(received_at: float, payload: bytes) -> None:
    inbox.append(str(paths.inbox_path()), received_at, payload)


def inbox_count() -> int:
    conn = sqlite3.connect(paths.inbox_path())
    try:
        return conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
    finally:
        conn.close()


def spooled(directory: Path | None = None) -> list[Path]:
    dirs = [directory] if directory else [Path(d) for d in paths.spool_dirs()]
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir())


def events() -> list[HookEvent]:
    with DBSession(get_engine()) as db:
        return list(db.exec(select(HookEvent).order_by(HookEvent.id)).all())


def quarantined() -> list[Quarantine]:
    with DBSession(get_engine()) as db:
        return list(db.exec(select(Quarantine).order_by(Quarantine.id)).all())


def hook_event(n: int, **extra) -> bytes:
    return json.dumps({"session_id": "sess-1", "hook_event_name": "PostToolUse", "tool_use_id": f"toolu_{n}",
                       "cwd": "/work/project", **extra}).encode()


# ----------------------------------------------------------------------------------------------
# Parsing and identity


@pytest.mark.parametrize(("payload", "reason"), [
    (b"", "empty: the hook received nothing on stdin"),
    (b"  \n\t", "empty: only whitespace on stdin"),
    (b'{"a": "caf\xc3\xa9 \xff"}', "not UTF-8: byte 0xff at byte 13"),
    # The error is after a 2-byte character: its position is counted in bytes, not characters.
    ('{"prompt": "é", oops}'.encode(), "invalid JSON at byte 17 (line 1, column 17): Expecting property name enclosed in double quotes"),
    (b'{"hook_event_name": "Stop"', "invalid JSON at byte 26 (line 1, column 27): Expecting ',' delimiter"),
    (b"[1, 2]", "not a JSON object: the payload is an array"),
    (b'"Stop"', "not a JSON object: the payload is a string"),
    (b"null", "not a JSON object: the payload is null"),
    (b'{"session_id": "s"}', "missing hook_event_name: a JSON object, but not a hook event"),
    (b'{"hook_event_name": 7}', "missing hook_event_name: it is 7, not an event name"),
    (b'{"hook_event_name": ""}', 'missing hook_event_name: it is "", not an event name'),
    (b"[" * 100_000, "invalid JSON: nested too deeply to parse"),
])
def test_parse_event_gives_a_clear_reason_for_every_kind_of_bad_input(payload, reason):
    assert parse_event(payload) == (None, reason)


def test_event_key_is_sha256_of_the_exact_received_at_and_payload():
    expected = hashlib.sha256(b"1760000000.123456\n" + b"{}").hexdigest()
    assert event_key(1760000000.123456, b"{}") == expected
    assert event_key(1760000000.123457, b"{}") != expected
    assert event_key(1760000000.123456, b"{} ") != expected


# ----------------------------------------------------------------------------------------------
# Storing


def test_real_hook_payloads_become_hook_events_with_their_ids(home):
    files = sorted((HOOK_PAYLOADS / "seeknal_2026-02").glob("*.json"))
    payloads = [json.dumps(p).encode() for f in files for p in json.loads(f.read_text())]
    assert len(payloads) >= 8
    for i, payload in enumerate(payloads):
        add_row(1760000000.0 + i, payload)
    report = drain()
    assert (report.stored, report.quarantined, report.duplicates, report.from_inbox) == (len(payloads), 0, 0, len(payloads))
    assert inbox_count() == 0
    stored = events()
    for i, (row, payload) in enumerate(zip(stored, payloads)):
        original = json.loads(payload)
        assert row.payload == original
        assert row.event == original["hook_event_name"]
        assert row.session_id == original["session_id"]
        assert row.tool_use_id == original.get("tool_use_id")
        assert row.agent_id == original.get("agent_id")
        assert row.event_key == event_key(1760000000.0 + i, payload)
        assert row.received_at.timestamp() == pytest.approx(1760000000.0 + i)
    assert any(row.tool_use_id for row in stored) and any(row.agent_id for row in stored)


def test_every_bad_input_is_quarantined_with_its_reason_and_the_rest_is_stored(home):
    bad = [b"", b"\xff\xfe\x00", b"{not json", b"[]", b'{"x": 1}']
    for i in range(20):
        add_row(1760000000.0 + i, hook_event(i) if i % 4 else bad[(i // 4) % len(bad)])
    report = drain()
    assert report.stored == 15 and report.quarantined == 5 and report.duplicates == 0
    assert report.quarantine_reasons == {"empty": 1, "not UTF-8": 1, "invalid JSON": 1,
                                         "not a JSON object": 1, "missing hook_event_name": 1}
    rows = quarantined()
    assert [q.payload for q in rows] == bad
    assert all(q.source == "inbox" and q.reason for q in rows)
    assert inbox_count() == 0


def test_redelivered_and_doubly_captured_events_are_stored_once(home):
    payload = hook_event(1)
    add_row(1760000000.5, payload)
    add_row(1760000000.5, payload)  # the same event delivered twice
    # ... and once more through the spool (the hook wrote both: inbox and spool copies).
    inbox.spool(str(home), 1760000000.5, payload)
    add_row(1760000001.5, b"{broken")
    add_row(1760000001.5, b"{broken")
    report = drain()
    assert (report.stored, report.duplicates, report.quarantined) == (1, 3, 1)
    assert len(events()) == 1 and len(quarantined()) == 1
    assert inbox_count() == 0 and spooled() == []
    # Draining again finds nothing and changes nothing.
    assert drain() == DrainReport()


def test_rows_are_kept_until_the_store_has_committed_them(home):
    """A DELETE that fails after the commit leaves the rows; the next drain meets them as
    duplicates: stored exactly once."""
    for i in range(5):
        add_row(1760000000.0 + i, hook_event(i))
    conn = sqlite3.connect(paths.inbox_path())
    conn.execute("CREATE TRIGGER keep BEFORE DELETE ON inbox BEGIN SELECT RAISE(ABORT, 'disk went away'); END")
    conn.commit()
    first = drain()
    assert first.stored == 5 and inbox_count() == 5
    assert any("could not delete" in e and "disk went away" in e for e in first.errors)
    conn.execute("DROP TRIGGER keep")
    conn.commit()
    conn.close()
    second = drain()
    assert (second.stored, second.duplicates, second.errors) == (0, 5, [])
    assert inbox_count() == 0 and len(events()) == 5


def test_a_drain_killed_between_commit_and_delete_loses_and_duplicates_nothing(home, tmp_path):
    for i in range(30):
        add_row(1760000000.0 + i, hook_event(i))
    # A real process: drain in batches of 10, and die (no cleanup) right after the first
    # batch's store transaction committed, before its inbox rows are deleted.
    script = textwrap.dedent("""
        import os
        from ccrl.agent.capture import drain as d
        real = d._store_batch
        def store_then_die(*args, **kwargs):
            real(*args, **kwargs)
            os._exit(17)
        d._store_batch = store_then_die
        d.drain(batch_rows=10)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 17, proc.stderr.decode()
    assert inbox_count() == 30  # nothing deleted
    assert len(events()) == 10  # the first batch is in the store
    report = drain(batch_rows=10)
    assert (report.stored, report.duplicates) == (20, 10)
    assert len(events()) == 30 and len({e.tool_use_id for e in events()}) == 30
    assert inbox_count() == 0


def test_batches_bound_rows_and_bytes(home):
    big = "x" * 300_000
    for i in range(25):
        add_row(1760000000.0 + i, hook_event(i, blob=big if i % 5 == 0 else ""))
    conn = inbox.connect(str(paths.inbox_path()))
    from ccrl.agent.capture.drain import _inbox_batches

    batches = list(_inbox_batches(conn, 25, rows=7, size=500_000))
    conn.close()
    assert [item.ref for batch in batches for item in batch] == list(range(1, 26))
    assert all(len(b) <= 7 for b in batches)
    # A batch stops at the row that reaches the byte budget.
    assert all(sum(len(i.payload) for i in b[:-1]) < 500_000 for b in batches)
    report = drain(batch_rows=7, batch_bytes=500_000)
    assert report.stored == 25 and inbox_count() == 0


def test_one_row_the_store_rejects_is_quarantined_and_the_batch_is_stored(home):
    engine = get_engine()
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER poison BEFORE INSERT ON hook_events WHEN NEW.session_id = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
    for i in range(6):
        add_row(1760000000.0 + i, hook_event(i, session_id="poison" if i == 3 else "sess-1"))
    report = drain()
    assert (report.stored, report.quarantined) == (5, 1)
    (q,) = quarantined()
    assert q.reason.startswith("store rejected the event") and "poisoned row" in q.reason
    assert json.loads(q.payload)["session_id"] == "poison"
    assert inbox_count() == 0


def test_deeply_nested_events_are_stored_or_quarantined_never_raised(home):
    deep = {"hook_event_name": "PostToolUse", "session_id": "s"}
    node = deep
    for _ in range(700):
        node["x"] = {}
        node = node["x"]
    add_row(1760000000.0, json.dumps(deep).encode())
    add_row(1760000001.0, b'{"hook_event_name": "Stop", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    add_row(1760000002.0, hook_event(1))
    report = drain()
    assert report.stored + report.quarantined == 3 and report.stored >= 2
    assert inbox_count() == 0


def test_payloads_are_redacted_again_at_drain(home):
    # As if written by an older hook with fewer rules, or by hand.
    add_row(1760000000.0, hook_event(1, tool_response={"stdout": "ghp_16C7e42F292c6912E7710c838347Ae178B4a"}))
    add_row(1760000001.0, b"not json: AKIAIOSFODNN7EXAMPLE")
    drain()
    (event,) = events()
    assert event.payload["tool_response"]["stdout"] == "[REDACTED:github_token]"
    (q,) = quarantined()
    assert q.payload == b"not json: [REDACTED:aws_access_key]"


def test_a_payload_the_hook_could_not_redact_is_quarantined_with_why(home):
    add_row(1760000000.0, REDACTION_FAILED + b" (MemoryError); 123456789 bytes not kept")
    report = drain()
    assert report.quarantined == 1
    assert quarantined()[0].reason == "ccrl: redaction failed (MemoryError); 123456789 bytes not kept"


def test_events_from_a_directory_that_opted_out_since_are_dropped(home, tmp_path):
    private = tmp_path / "private-repo"
    (private / "src").mkdir(parents=True)
    (private / ".ccrl-ignore").write_text("")
    add_row(1760000000.0, hook_event(1, cwd=str(private / "src")))
    add_row(1760000001.0, hook_event(2, cwd=str(tmp_path)))
    report = drain()
    assert (report.ignored, report.stored) == (1, 1)
    assert [e.tool_use_id for e in events()] == ["toolu_2"]
    assert inbox_count() == 0


# ----------------------------------------------------------------------------------------------
# The spool


def test_spool_files_from_every_spool_dir_are_drained_in_arrival_order(home):
    dirs = [Path(d) for d in paths.spool_dirs()]
    assert len(dirs) == 3  # data dir, $XDG_RUNTIME_DIR, $TMPDIR
    for i, directory in enumerate(reversed(dirs)):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = inbox.spool_name(1760000000.0 + i)
        (directory / name).write_bytes(hook_event(i))
    report = drain()
    assert (report.from_spool, report.stored, report.left) == (3, 3, 0)
    assert [e.tool_use_id for e in events()] == ["toolu_0", "toolu_1", "toolu_2"]
    assert spooled() == []


def test_a_corrupt_spool_file_never_blocks_the_others(home):
    spool = Path(paths.spool_dirs()[0])
    inbox.spool(str(home), 1760000000.0, hook_event(1))
    (spool / inbox.spool_name(1760000001.0)).write_bytes(b"\x00\x01garbage")
    (spool / "weird-name.event").write_bytes(hook_event(2))  # no time in the name: mtime stands in
    (spool / "1760000002000000-1-aa.event").mkdir()  # not a file: reported and left alone
    (spool / "1760000003000000-1-bb.event").symlink_to("/etc/hostname")  # never followed
    inbox.spool(str(home), 1760000004.0, hook_event(3))
    report = drain()
    assert (report.stored, report.quarantined, report.left) == (3, 1, 2)
    assert sorted(e.tool_use_id for e in events()) == ["toolu_1", "toolu_2", "toolu_3"]
    assert quarantined()[0].reason.startswith("not UTF-8") or quarantined()[0].reason.startswith("invalid JSON")
    assert quarantined()[0].source == "spool"
    assert len(report.errors) == 2 and all("it stays there" in e for e in report.errors)
    assert sorted(p.name for p in spooled(spool)) == ["1760000002000000-1-aa.event", "1760000003000000-1-bb.event"]


def test_an_unfinished_spool_write_is_drained_only_once_stale(home):
    spool = Path(paths.spool_dirs()[0])
    fresh = spool / ("." + inbox.spool_name(1760000000.0) + ".tmp")
    fresh.write_bytes(b'{"hook_event_name": "Sto')
    stale = spool / ("." + inbox.spool_name(1760000001.0) + ".tmp")
    stale.write_bytes(b'{"hook_event_name": "Stop", "session_id": "s"')
    old = time.time() - 3600
    os.utime(stale, (old, old))
    report = drain()
    assert (report.from_spool, report.quarantined) == (1, 1)
    assert quarantined()[0].reason.startswith("unfinished spool write (the hook was stopped while writing it); invalid JSON")
    assert report.quarantine_reasons == {"unfinished spool write": 1}
    assert spooled(spool) == [fresh]  # a hook may still be writing this one


def test_a_spool_dir_that_is_not_ours_is_never_read(home, tmp_path, monkeypatch):
    elsewhere = tmp_path / "someone-elses"
    elsewhere.mkdir()
    (elsewhere / inbox.spool_name(1760000000.0)).write_bytes(hook_event(1))
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    runtime.mkdir(parents=True, exist_ok=True)
    (runtime / "ccrl-spool").symlink_to(elsewhere)  # planted look-alike
    report = drain()
    assert report.stored == 0 and any("not a directory owned by this user" in e for e in report.errors)
    assert len(list(elsewhere.iterdir())) == 1


def test_ensure_local_stores_creates_private_dirs_and_inbox(ccrl_home):
    path = ensure_local_stores()
    assert path == ccrl_home / "inbox.db" and path.is_file()
    assert stat.S_IMODE(ccrl_home.stat().st_mode) == 0o700
    assert stat.S_IMODE((ccrl_home / "spool").stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='inbox'").fetchone()
    conn.close()
    assert ensure_local_stores() == path  # idempotent


def test_drain_recreates_a_missing_inbox_and_reports_an_unusable_one(home):
    paths_inbox = Path(paths.inbox_path())
    inbox.spool(str(home), 1760000000.0, hook_event(1))
    paths_inbox.unlink()
    report = drain()
    assert report.stored == 1 and paths_inbox.is_file() and report.errors == []
    # An inbox that is not a database: reported, the spool is still drained.
    paths_inbox.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(paths_inbox) + suffix).unlink(missing_ok=True)
    inbox.spool(str(home), 1760000001.0, hook_event(2))
    report = drain()
    assert report.stored == 1
    assert report.errors and all(str(paths_inbox) in e for e in report.errors)
