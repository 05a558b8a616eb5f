"""The hook when the inbox cannot take an event: the event is spooled, and once things are
fixed the drain stores it; none lost, none duplicated.

What each test really does (the tests run as root here, and root ignores permission bits):

- locked: another connection holds the inbox's write lock (``BEGIN EXCLUSIVE``) past the hook's
  busy timeout; the hook gives up after it and marks the inbox busy, and later hooks spool at
  once while the mark is fresh.
- read-only inbox / read-only data dir: ``chmod`` removes the write bits, and when the tests run
  as root the hook is started through ``setpriv`` with CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and
  CAP_FOWNER dropped, so the permission bits bind it exactly as they bind a normal user.
- missing inbox, inbox without its table, inbox that is not a database, data dir path that is
  a regular file: the files are made so.
- writes failing: ``ulimit -f`` (RLIMIT_FSIZE) in the ``sh -c`` Claude Code runs: writes past the
  limit fail with EFBIG; with only the soft limit lowered the hook lifts it to the hard limit.
- disk full: the data dir is a 1 MB tmpfs filled to the last byte (ENOSPC), inside a private
  user and mount namespace (``unshare -rm``) so nothing is mounted on the machine itself.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlmodel import Session as DBSession
from sqlmodel import select

from ccrl.agent.capture.drain import drain, ensure_local_stores
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import HookEvent
from ccrl.hooks import paths
from ccrl.hooks.capture import hook_command

# Root bypasses permission bits through these capabilities; without them it meets them.
DROP_DAC = "setpriv --bounding-set -dac_override,-dac_read_search,-fowner --"


@pytest.fixture
def home(ccrl_home, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return ccrl_home


def run_hook(payload: bytes, command: str | None = None, as_user: bool = False) -> None:
    """Run the hook through ``sh -c`` as Claude Code does; exit 0 and no output, always."""
    command = command or hook_command()
    if as_user and os.geteuid() == 0:
        command = f"{DROP_DAC} /bin/sh -c {shlex.quote(command)}"
    proc = subprocess.run(["/bin/sh", "-c", command], input=payload, capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def event(n: int) -> bytes:
    return json.dumps({"session_id": "s-1", "hook_event_name": "PostToolUse", "tool_use_id": f"toolu_{n:04d}",
                       "cwd": "/work/app", "tool_name": "Bash"}).encode()


def inbox_rows() -> int:
    conn = sqlite3.connect(paths.inbox_path())
    try:
        return conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
    finally:
        conn.close()


def spool_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    return sorted(directory.glob("*.event")) if directory.is_dir() else []


def all_spool_files() -> list[Path]:
    return [p for d in paths.spool_dirs() for p in spool_files(d)]


def assert_stored_exactly(ids: range) -> None:
    with DBSession(get_engine()) as db:
        got = [e.tool_use_id for e in db.exec(select(HookEvent).order_by(HookEvent.tool_use_id)).all()]
    assert got == [f"toolu_{n:04d}" for n in ids]


def test_locked_inbox_spools_after_the_busy_timeout_and_then_without_waiting(home):
    ensure_local_stores()
    holder = sqlite3.connect(paths.inbox_path(), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    run_hook(event(0))  # waits out the busy timeout, then spools
    assert len(spool_files(home / "spool")) == 1
    assert Path(paths.busy_mark_path()).exists()
    holder.execute("ROLLBACK")
    holder.close()
    # The lock is gone, but the mark is fresh: these go straight to the spool, no waiting.
    run_hook(event(1))
    run_hook(event(2))
    assert len(spool_files(home / "spool")) == 3 and inbox_rows() == 0
    report = drain()
    assert (report.stored, report.from_spool, report.duplicates) == (3, 3, 0)
    assert not Path(paths.busy_mark_path()).exists() and all_spool_files() == []
    run_hook(event(3))  # the inbox takes events again
    assert inbox_rows() == 1 and all_spool_files() == []
    assert drain().stored == 1
    assert_stored_exactly(range(4))


def test_a_stale_or_future_busy_mark_is_ignored(home):
    ensure_local_stores()
    mark = Path(paths.busy_mark_path())
    for offset in (-3600, +3600):  # expired; or from the future (the clock was set back)
        mark.touch()
        os.utime(mark, (time.time() + offset, time.time() + offset))
        run_hook(event(0 if offset < 0 else 1))
    assert inbox_rows() == 2 and all_spool_files() == []
    assert drain().stored == 2


def test_read_only_inbox(home):
    ensure_local_stores()
    run_hook(event(0), as_user=True)
    inbox = Path(paths.inbox_path())
    inbox.chmod(0o400)
    try:
        for n in (1, 2, 3):
            run_hook(event(n), as_user=True)
        assert len(spool_files(home / "spool")) == 3
    finally:
        inbox.chmod(0o600)
    assert inbox_rows() == 1
    report = drain()
    assert (report.stored, report.from_inbox, report.from_spool) == (4, 1, 3)
    assert_stored_exactly(range(4))


def test_read_only_data_dir_spools_to_the_runtime_dir(home, tmp_path):
    ensure_local_stores()
    runtime_spool = Path(os.environ["XDG_RUNTIME_DIR"]) / "ccrl-spool"
    for directory in (home / "spool", home):
        directory.chmod(0o500)
    try:
        for n in range(3):
            run_hook(event(n), as_user=True)
        assert spool_files(home / "spool") == []
        assert len(spool_files(runtime_spool)) == 3
    finally:
        for directory in (home, home / "spool"):
            directory.chmod(0o700)
    report = drain()
    assert (report.stored, report.from_spool) == (3, 3)
    assert all_spool_files() == []
    assert_stored_exactly(range(3))


def test_data_dir_path_taken_by_a_file_spools_to_the_runtime_dir(home):
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("not a directory")
    run_hook(event(0))
    run_hook(event(1))
    runtime_spool = Path(os.environ["XDG_RUNTIME_DIR"]) / "ccrl-spool"
    assert len(spool_files(runtime_spool)) == 2
    home.unlink()
    assert drain().stored == 2
    assert all_spool_files() == []
    assert_stored_exactly(range(2))


def test_missing_inbox(home):
    home.mkdir(parents=True)
    run_hook(event(0))
    assert not Path(paths.inbox_path()).exists()  # the hook never creates the store itself
    assert len(spool_files(home / "spool")) == 1
    assert drain().stored == 1  # the drain sets the inbox up
    run_hook(event(1))
    assert inbox_rows() == 1
    assert drain().stored == 1
    assert_stored_exactly(range(2))


@pytest.mark.parametrize("content", ["empty file", "other table"])
def test_inbox_without_its_schema(home, content):
    home.mkdir(parents=True)
    inbox = Path(paths.inbox_path())
    if content == "empty file":
        inbox.write_bytes(b"")
    else:
        conn = sqlite3.connect(inbox)
        conn.execute("CREATE TABLE unrelated (x)")
        conn.commit()
        conn.close()
    run_hook(event(0))
    run_hook(event(1))
    assert len(spool_files(home / "spool")) == 2
    assert drain().stored == 2
    run_hook(event(2))
    assert inbox_rows() == 1 and drain().stored == 1
    assert_stored_exactly(range(3))


def test_inbox_that_is_not_a_database(home):
    home.mkdir(parents=True)
    Path(paths.inbox_path()).write_bytes(b"garbage, not SQLite " * 500)
    run_hook(event(0))
    assert len(spool_files(home / "spool")) == 1
    report = drain()
    assert report.stored == 1  # the spool is drained all the same
    assert report.errors and all(paths.inbox_path() in e for e in report.errors)
    assert_stored_exactly(range(1))


def test_writes_failing_past_a_file_size_limit(home):
    """``ulimit -f 1`` (512 bytes, soft and hard): the inbox's WAL cannot grow a page, a small
    spool file still fits."""
    ensure_local_stores()
    for n in range(3):
        run_hook(event(n), f"ulimit -f 1; {hook_command()}")
    assert len(spool_files(home / "spool")) == 3 and inbox_rows() == 0
    run_hook(event(3))  # no limit: the inbox again
    report = drain()
    assert (report.stored, report.from_spool, report.from_inbox) == (4, 3, 1)
    assert_stored_exactly(range(4))


def test_a_lowered_soft_file_size_limit_is_lifted_to_the_hard_one(home):
    """``ulimit -S -f 0``: not even the spool can be written, until the hook lifts its own soft
    limit to the hard limit (the most it may)."""
    ensure_local_stores()
    run_hook(event(0), f"ulimit -S -f 0; {hook_command()}")
    assert len(spool_files(home / "spool")) == 1
    assert drain().stored == 1
    assert_stored_exactly(range(1))


DISK_FULL_SCENARIO = textwrap.dedent("""
    import errno, json, os, subprocess, sys
    home = os.environ["CCRL_HOME"]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "ccrl-full", home], check=True)
    from ccrl.agent.capture.drain import drain, ensure_local_stores
    from ccrl.hooks import paths
    from ccrl.hooks.capture import hook_command
    ensure_local_stores()
    filler = os.path.join(home, "filler")
    with open(filler, "wb", buffering=0) as fh:
        while True:
            try:
                fh.write(b"x" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    ids = [f"toolu_{n:04d}" for n in range(3)]
    for tool_use_id in ids:
        payload = json.dumps({"session_id": "s", "hook_event_name": "PostToolUse", "tool_use_id": tool_use_id,
                              "cwd": "/work/app"}).encode()
        proc = subprocess.run(["/bin/sh", "-c", hook_command()], input=payload, capture_output=True)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b""), proc
    where = {d: sorted(n for n in os.listdir(d) if n.endswith(".event")) if os.path.isdir(d) else []
             for d in paths.spool_dirs()}
    os.unlink(filler)  # space again
    report = drain()
    from sqlmodel import Session, select
    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import HookEvent
    with Session(get_engine()) as db:
        stored = sorted(e.tool_use_id for e in db.exec(select(HookEvent)).all())
    print(json.dumps({"spooled": {d: len(v) for d, v in where.items()}, "report": report.as_dict(),
                      "stored": stored, "expected": ids}))
""")


def test_disk_full(home, tmp_path):
    if not shutil.which("unshare"):
        pytest.fail("this test needs unshare (util-linux) to mount a small tmpfs privately")
    home.mkdir(parents=True)
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", DISK_FULL_SCENARIO],
                          capture_output=True, timeout=300, text=True)
    assert proc.returncode == 0, f"unshare -rm with a tmpfs failed (user namespaces disabled?): {proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    data_spool, runtime_spool, tmp_spool = paths.spool_dirs()
    # The full data dir took nothing; the runtime dir got every event.
    assert result["spooled"] == {data_spool: 0, runtime_spool: 3, tmp_spool: 0}
    assert result["stored"] == result["expected"]
    assert result["report"]["stored"] == 3 and result["report"]["from_spool"] == 3
    assert all_spool_files() == []
