"""Many hooks writing one inbox at once, while the drain runs: every event stored exactly once.

Two shapes of concurrency:

- 8 separate processes × 200 events: each process runs the hook's ``capture()`` in a loop (one
  SQLite connection per event, as a hook run has), all released at the same moment, while this
  process drains again and again; then a final drain. Exactly 1,600 HookEvents, each once.
- real hook processes: 8 threads each start 25 ``sh -c "$(hook_command())"`` runs one after the
  other (200 hook processes, up to 8 at a time, as parallel tool calls fire them), again with a
  drain running meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session as DBSession
from sqlmodel import func, select

from ccrl.agent.capture.drain import DrainReport, drain, ensure_local_stores
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import HookEvent, Quarantine
from ccrl.hooks import paths
from ccrl.hooks.capture import hook_command

WORKERS = 8
EVENTS_PER_WORKER = 200

WORKER = textwrap.dedent("""
    import json, sys
    from collections import Counter
    from ccrl.hooks.capture import capture
    worker = int(sys.argv[1])
    count = int(sys.argv[2])
    sys.stdin.readline()  # released together with the other workers
    where = Counter()
    for n in range(count):
        payload = json.dumps({"session_id": f"session-{worker}", "hook_event_name": "PostToolUse",
                              "tool_use_id": f"w{worker}-e{n}", "cwd": "/work/app",
                              "tool_response": {"stdout": "x" * 2000}}).encode()
        where[capture(payload)] += 1
    print(json.dumps(where))
""")


@pytest.fixture
def home(ccrl_home, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ensure_local_stores()
    return ccrl_home


def add(total: DrainReport, report: DrainReport) -> None:
    for name in ("stored", "duplicates", "quarantined", "ignored", "from_inbox", "from_spool", "left"):
        setattr(total, name, getattr(total, name) + getattr(report, name))
    total.errors.extend(report.errors)


def drain_while(alive, total: DrainReport) -> int:
    """Drain repeatedly while ``alive()``; returns how many drains ran."""
    rounds = 0
    while alive():
        add(total, drain(batch_rows=100))
        rounds += 1
    return rounds


def stored_ids() -> list[str]:
    with DBSession(get_engine()) as db:
        return [e.tool_use_id for e in db.exec(select(HookEvent)).all()]


def quarantine_count() -> int:
    with DBSession(get_engine()) as db:
        return db.exec(select(func.count()).select_from(Quarantine)).one()


def nothing_pending() -> bool:
    import sqlite3

    conn = sqlite3.connect(paths.inbox_path())
    rows = conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
    conn.close()
    spooled = [p for d in paths.spool_dirs() if os.path.isdir(d) for p in Path(d).iterdir()]
    return rows == 0 and spooled == []


def test_8_processes_x_200_events_are_stored_exactly_once(home):
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(w), str(EVENTS_PER_WORKER)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for w in range(WORKERS)
    ]
    for proc in workers:  # release them all at once
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    total = DrainReport()
    rounds = drain_while(lambda: any(p.poll() is None for p in workers), total)
    where: Counter = Counter()
    for proc in workers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        where.update(json.loads(out))
    add(total, drain())
    expected = [f"w{w}-e{n}" for w in range(WORKERS) for n in range(EVENTS_PER_WORKER)]
    assert sum(where.values()) == len(expected) == 1600
    assert set(where) <= {"inbox", "spool"}  # nothing lost, nothing ignored
    ids = stored_ids()
    assert len(ids) == 1600 and sorted(ids) == sorted(expected)  # each exactly once
    assert total.stored == 1600 and total.quarantined == 0 and quarantine_count() == 0
    assert total.errors == []
    assert nothing_pending()
    assert rounds >= 1  # the drain really ran while the workers wrote


def test_concurrent_real_hook_processes_while_draining(home):
    command = hook_command()
    failures: list[str] = []

    def fire(worker: int) -> None:
        for n in range(25):
            payload = json.dumps({"session_id": "s", "hook_event_name": "PreToolUse",
                                  "tool_use_id": f"h{worker}-{n}", "cwd": "/work/app"}).encode()
            proc = subprocess.run(["/bin/sh", "-c", command], input=payload, capture_output=True, timeout=60)
            if (proc.returncode, proc.stdout, proc.stderr) != (0, b"", b""):
                failures.append(f"{worker}/{n}: {proc.returncode} {proc.stdout!r} {proc.stderr!r}")

    threads = [threading.Thread(target=fire, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    total = DrainReport()
    drain_while(lambda: any(t.is_alive() for t in threads), total)
    for thread in threads:
        thread.join()
    add(total, drain())
    assert failures == []
    expected = sorted(f"h{w}-{n}" for w in range(8) for n in range(25))
    assert sorted(stored_ids()) == expected
    assert total.stored == 200 and total.errors == []
    assert nothing_pending()
