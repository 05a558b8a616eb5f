"""The capture hook as Claude Code runs it: ``sh -c "$(hook_command())"`` with the event on stdin.

Real processes, real SQLite files: every test runs the exact command ``ccrl hooks install``
writes (or the installed ``ccrl-hook`` console script), then drains what it wrote.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session as DBSession
from sqlmodel import select

from ccrl.agent.capture.drain import drain, ensure_local_stores
from ccrl.agent.store.db import get_engine
from ccrl.agent.store.models import HookEvent, Quarantine
from ccrl.hooks import paths
from ccrl.hooks.capture import hook_command
from conftest import HOOK_PAYLOADS, REPO


@pytest.fixture
def home(ccrl_home, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return ccrl_home


def run_hook(payload: bytes, command: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the hook the way Claude Code does, and check the contract: exit 0, print nothing."""
    proc = subprocess.run(["/bin/sh", "-c", command or hook_command()], input=payload,
                          capture_output=True, timeout=60, **kwargs)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    return proc


def stored_events() -> list[HookEvent]:
    with DBSession(get_engine()) as db:
        return list(db.exec(select(HookEvent).order_by(HookEvent.id)).all())


def stored_quarantine() -> list[Quarantine]:
    with DBSession(get_engine()) as db:
        return list(db.exec(select(Quarantine).order_by(Quarantine.id)).all())


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def event(**fields) -> bytes:
    return json.dumps({"session_id": "s-1", "hook_event_name": "PostToolUse", "cwd": "/work/app", **fields}).encode()


def real_payloads() -> list[dict]:
    return [p for f in sorted(HOOK_PAYLOADS.glob("*/*.json")) for p in json.loads(f.read_text())]


def test_real_claude_code_payloads_are_captured_exactly(home):
    ensure_local_stores()
    payloads = real_payloads()[::7]  # every kind of event, both Claude Code generations
    assert {p["hook_event_name"] for p in payloads} >= {"PreToolUse", "PostToolUse", "UserPromptSubmit", "Stop"}
    for payload in payloads:
        run_hook(json.dumps(payload).encode())
    report = drain()
    assert (report.stored, report.quarantined, report.from_spool) == (len(payloads), 0, 0)
    assert [e.payload for e in stored_events()] == payloads


def test_the_installed_command_works_from_anywhere_with_an_empty_path(home, tmp_path):
    """Claude Code's environment may lack the venv: the command carries absolute paths and
    the data dir, and runs from the project's directory."""
    ensure_local_stores()
    elsewhere = tmp_path / "some project"
    elsewhere.mkdir()
    command = hook_command(str(home))
    run_hook(event(tool_use_id="t-1", cwd=str(elsewhere)), command, cwd=elsewhere, env={"PATH": ""})
    assert drain().stored == 1
    assert stored_events()[0].tool_use_id == "t-1"


def test_hook_command_form(home, tmp_path, monkeypatch):
    from ccrl.hooks.command import parse

    parsed = parse(hook_command(str(home)))
    assert parsed.home == str(home)
    assert parsed.python == os.path.abspath(sys.executable) and os.path.isabs(parsed.python)
    assert parsed.script == str(REPO / "hooks" / "capture.py") and Path(parsed.script).is_file()
    # A home with spaces and quotes survives the shell.
    odd = tmp_path / "it's my data"
    assert parse(hook_command(str(odd))).home == str(odd)
    # CCRL_HOME is always pinned, also to the default and to a home found through XDG_DATA_HOME.
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("CCRL_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert parse(hook_command()).home == str(tmp_path / "user" / ".local" / "share" / "ccrl")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    assert parse(hook_command()).home == str(tmp_path / "xdg-data" / "ccrl")


def test_the_console_script_is_the_same_hook(home):
    ensure_local_stores()
    script = Path(sys.executable).parent / "ccrl-hook"
    assert script.is_file()
    run_hook(event(tool_use_id="via-console-script"), shlex.quote(str(script)))
    assert drain().stored == 1 and stored_events()[0].tool_use_id == "via-console-script"


# ----------------------------------------------------------------------------------------------
# Opt-out


def test_ccrl_disable_stores_nothing_anywhere(home, tmp_path):
    ensure_local_stores()
    for value in ("1", "true", "YES"):
        run_hook(event(), f"export CCRL_DISABLE={value}; {hook_command()}")
    report = drain()
    assert report.read == 0 and stored_events() == [] and stored_quarantine() == []
    assert files_under(*(Path(d) for d in paths.spool_dirs())) == []


def test_ccrl_ignore_at_the_repository_root_or_above(home, tmp_path):
    ensure_local_stores()
    repo = tmp_path / "private-repo"
    deep = repo / "src" / "pkg"
    deep.mkdir(parents=True)
    (repo / ".ccrl-ignore").write_text("")
    open_repo = tmp_path / "open-repo"
    open_repo.mkdir()
    odd = repo / 'dir "quoted"'
    odd.mkdir()
    run_hook(event(tool_use_id="ignored-root", cwd=str(repo)))
    run_hook(event(tool_use_id="ignored-deep", cwd=str(deep)))
    run_hook(event(tool_use_id="ignored-escaped", cwd=str(odd)))  # "cwd" holds JSON escapes
    # No cwd in the payload: the hook's own working directory (Claude Code's project) decides.
    run_hook(json.dumps({"hook_event_name": "Stop", "session_id": "s"}).encode(), cwd=deep)
    run_hook(event(tool_use_id="kept", cwd=str(open_repo)), cwd=open_repo)
    assert drain().stored == 1
    assert [e.tool_use_id for e in stored_events()] == ["kept"]


# ----------------------------------------------------------------------------------------------
# Privacy


def test_files_are_private_even_when_the_hook_creates_the_data_dir(home):
    # Nothing set up yet: the inbox is missing, so the hook spools into a data dir it creates.
    assert not home.exists()
    run_hook(event())
    spool = home / "spool"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    (spooled,) = list(spool.iterdir())
    assert stat.S_IMODE(spooled.stat().st_mode) == 0o600
    # Once set up, the inbox and the WAL files SQLite creates next to it are 0600 too.
    ensure_local_stores()
    run_hook(event())
    db_files = [p for p in home.iterdir() if p.name.startswith("inbox.db")]
    assert {p.name for p in db_files} >= {"inbox.db", "inbox.db-wal", "inbox.db-shm"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in db_files)


def test_no_secret_reaches_the_disk(home, tmp_path):
    ensure_local_stores()
    secrets = {
        "AKIAIOSFODNN7EXAMPLE": "aws_access_key",
        "sk-ant-api03-Xy9fQ2LmN8pR4tV6wZ1aB3cD5eF7gH9jK": "anthropic_key",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a": "github_token",
        "hunter2-prod": "secret",
        "MIIEowIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aozN3tihPmljnnudb9G3HECdnH": "private_key",
    }
    env_file = ("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nANTHROPIC_API_KEY=sk-ant-api03-Xy9fQ2LmN8pR4tV6wZ1aB3cD5eF7gH9jK\n"
                "DB_PASSWORD=hunter2-prod\n")
    key = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aozN3tihPmljnnudb9G3HECdnH\n"
           "-----END RSA PRIVATE KEY-----\n")
    run_hook(event(tool_name="Read", tool_response={"file": {"content": env_file}}))
    run_hook(event(tool_name="Bash", tool_input={"command": "git push https://ghp_16C7e42F292c6912E7710c838347Ae178B4a@github.com/o/r"},
                   tool_response={"stdout": key}))
    # The spool path redacts too: make the inbox unusable for one event.
    (home / "inbox.db").rename(home / "inbox.off")
    run_hook(event(prompt="my password=hunter2-prod please"))
    (home / "inbox.off").rename(home / "inbox.db")
    spool_files = files_under(home / "spool")
    assert len(spool_files) == 1
    everything = files_under(home, tmp_path / "xdg-runtime", tmp_path / "tmp")
    for path in everything:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret} found in {path}"
    assert drain().stored == 3
    stored = json.dumps([e.payload for e in stored_events()])
    for secret, kind in secrets.items():
        assert secret not in stored
        assert f"[REDACTED:{kind}]" in stored
    for path in files_under(home):  # the store (ccrl.db) included
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in secrets), path


# ----------------------------------------------------------------------------------------------
# stdin that misbehaves


def test_a_stdin_that_never_closes_does_not_hang_the_session(home):
    ensure_local_stores()
    proc = subprocess.Popen(["/bin/sh", "-c", hook_command()], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = b'{"hook_event_name": "PostToolUse", "session_id": "s", "tool_resp'
    proc.stdin.write(partial)
    proc.stdin.flush()
    # Keep the pipe open: the hook must give up waiting on its own (idle timeout) and exit 0.
    rc = proc.wait(timeout=60)
    assert rc == 0 and proc.stdout.read() == b"" and proc.stderr.read() == b""
    proc.stdin.close()
    report = drain()
    assert report.quarantined == 1
    (kept,) = stored_quarantine()
    assert kept.payload == partial  # what arrived is kept, with why it is unusable
    assert kept.reason == "invalid JSON at byte 54 (line 1, column 55): Unterminated string starting at"


def test_stdin_as_a_non_blocking_socket_arriving_in_pieces(home):
    """Node (Claude Code) gives a child its stdin as one end of a socket pair."""
    ensure_local_stores()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)  # O_NONBLOCK on the description the hook inherits
    payload = event(tool_use_id="in-pieces", tool_response={"stdout": "z" * 200_000})  # within the size budget
    proc = subprocess.Popen(["/bin/sh", "-c", hook_command()], stdin=theirs.fileno(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    theirs.close()
    ours.sendall(payload[:1000])
    time.sleep(0.3)  # the hook has read the first piece and waits for more
    ours.sendall(payload[1000:])
    ours.shutdown(socket.SHUT_WR)
    assert proc.wait(timeout=60) == 0 and proc.stdout.read() == b"" and proc.stderr.read() == b""
    ours.close()
    assert drain().stored == 1
    assert stored_events()[0].payload == json.loads(payload)


def test_closed_or_empty_stdin_and_closed_stdout(home):
    ensure_local_stores()
    run_hook(b"", f"{{ {hook_command()}; }} <&-")  # stdin closed altogether
    run_hook(b"")  # stdin empty
    run_hook(event(tool_use_id="no-stdout"), f"{{ {hook_command()}; }} >&- 2>&-")
    report = drain()
    assert (report.stored, report.quarantined) == (1, 2)
    assert {q.reason for q in stored_quarantine()} == {"empty: the hook received nothing on stdin"}


def test_a_huge_payload_is_stored_cut_to_the_budget_and_redacted(home):
    """Past the size budget the event is kept, cut, with a marker; what is kept is redacted
    (tests/test_hook_budget.py covers the budget itself)."""
    from ccrl.hooks import budget

    ensure_local_stores()
    blob = "line of tool output\n" * 100_000  # 2 MB, twice
    payload = event(tool_use_id="huge", tool_response={"stdout": "DB_PASSWORD=hunter2-prod\n" + blob + blob})
    run_hook(payload)
    assert drain().stored == 1
    (stored,) = stored_events()
    stdout = stored.payload["tool_response"]["stdout"]
    assert stdout.startswith("DB_PASSWORD=[REDACTED:secret]\nline of tool output\n")
    assert stdout.endswith(budget.marker(budget.EVENT_BUDGET_BYTES, len(payload)))


def test_the_inbox_wal_stays_small_across_hook_runs(home):
    """Hooks leave their connection open (no checkpoint per event); the WAL must still be reset
    regularly, or every hook would re-read an ever larger WAL."""
    from ccrl.hooks.inbox import WAL_TRUNCATE_BYTES

    ensure_local_stores()
    wal = Path(str(paths.inbox_path()) + "-wal")
    sizes = []
    for n in range(40):
        run_hook(event(tool_use_id=f"t{n}", tool_response={"stdout": "y" * 20_000}))
        sizes.append(wal.stat().st_size if wal.exists() else 0)
    assert sum(sizes) > 0 and max(sizes) <= WAL_TRUNCATE_BYTES + 128 * 1024
    assert sizes.count(0) >= 2  # truncated more than once
    assert drain().stored == 40
