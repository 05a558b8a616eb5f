"""Events the real hook left where the agent never reads them: ``ccrl doctor`` finds every one
(changing nothing), ``ccrl hooks collect`` moves them, and ``ccrl ingest`` stores each once.

Each stray event is written by running a real hook command through ``sh -c`` in an environment
that differs from the agent's the way Claude Code's can: no ``XDG_DATA_HOME`` under a legacy
command without ``CCRL_HOME``, a settings entry pinned to another data directory, a data
directory it cannot write (so it spools to its own runtime or temp folder).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ccrl.agent.capture import claude_settings, stray_events
from ccrl.agent.cli import app
from ccrl.hooks import command as hook_commands
from ccrl.hooks.inbox import ensure_inbox

from conftest import HOOK_PAYLOADS

PAYLOAD = json.loads((HOOK_PAYLOADS / "seeknal_2026-02" / "post_tool_use.json").read_text())[0]


def hook(command: str, env: dict[str, str], tool_use_id: str) -> None:
    payload = json.dumps({**PAYLOAD, "tool_use_id": tool_use_id}).encode()
    proc = subprocess.run(["/bin/sh", "-c", command], input=payload, env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def cli(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def stray_check(report: dict) -> dict:
    (check,) = [c for c in report["checks"] if c["name"] == "stray events"]
    return check


def stored_tool_use_ids() -> list[str]:
    from sqlmodel import Session, select

    from ccrl.agent.store.db import get_engine
    from ccrl.agent.store.models import HookEvent

    with Session(get_engine()) as db:
        return sorted(e.tool_use_id for e in db.exec(select(HookEvent)).all())


@pytest.fixture
def world(ccrl_home, tmp_path, monkeypatch):
    """The agent's data dir (CCRL_HOME) and environment, a HOME of its own, and the places a
    session with another environment would use for its runtime and temp folders."""
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.setenv("HOME", str(user))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "agent-tmp"))
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    # The session's runtime dir as logind names it, and the temp dir the hook falls back to.
    monkeypatch.setattr(stray_events, "RUNTIME_DIRS", (str(tmp_path / "run" / "user" / "{uid}"),))
    monkeypatch.setattr(stray_events, "TEMP_DIRS", (str(tmp_path / "session-tmp"),))
    (tmp_path / "session-tmp").mkdir()
    return {"home": ccrl_home, "user": user, "tmp": tmp_path,
            "runtime": tmp_path / "run" / "user" / str(os.getuid())}


def test_doctor_finds_every_stray_event_and_collect_brings_them_in(world, monkeypatch):
    home, user, tmp = world["home"], world["user"], world["tmp"]
    assert CliRunner().invoke(app, ["hooks", "install"]).exit_code == 0  # the agent's own inbox
    python, script = sys.executable, hook_commands.CAPTURE_SCRIPT

    # 1. A legacy entry (no CCRL_HOME) run by a Claude Code without XDG_DATA_HOME: the hook
    #    used ~/.local/share/ccrl, where no inbox exists, so it spooled there.
    legacy = hook_commands.render_legacy(python, script, None)
    hook(legacy, {"HOME": str(user)}, "legacy-1")
    hook(legacy, {"HOME": str(user)}, "legacy-2")
    # 2. A project's local settings pinned to another data directory, which has an inbox.
    other = tmp / "other data"
    ensure_inbox(str(other / "inbox.db"))
    project = tmp / "project"
    claude_settings.install(project / ".claude" / "settings.local.json", hook_commands.render(python, script, str(other)))
    pinned = hook_commands.render(python, script, str(other))
    for n in range(3):
        hook(pinned, {"HOME": str(user)}, f"other-{n}")
    # 3. A data directory the hook could not write: it spooled to its session's runtime dir ...
    unwritable = "/proc/ccrl-cannot-be-created"
    hook(hook_commands.render(python, script, unwritable), {"HOME": str(user), "XDG_RUNTIME_DIR": str(world["runtime"])},
         "runtime-1")
    # ... or, without one, to its temp dir.
    hook(hook_commands.render(python, script, unwritable), {"HOME": str(user), "TMPDIR": str(tmp / "session-tmp")},
         "temp-1")
    # And one event where the agent does read: not a stray.
    hook(hook_commands.hook_command(str(home)), {"HOME": str(user)}, "own-1")

    other_inbox = (other / "inbox.db").read_bytes()
    monkeypatch.chdir(project)  # the project scopes' settings are read from the current directory
    code, report = cli("doctor")
    check = stray_check(report)
    assert code == 0 and check["level"] == "warning"
    assert check["detail"].startswith("7 captured event(s) where the agent never reads them")
    for where in (f"2 in {user}/.local/share/ccrl/spool", f"3 in {other}/inbox.db",
                  f"1 in {world['runtime']}/ccrl-spool", f"1 in {tmp}/session-tmp/ccrl-spool-{os.getuid()}"):
        assert where in check["detail"]
    assert check["fix"].startswith("ccrl hooks collect")
    assert (other / "inbox.db").read_bytes() == other_inbox  # looking changed nothing
    assert len(list((user / ".local" / "share" / "ccrl" / "spool").glob("*.event"))) == 2

    code, collected = cli("hooks", "collect")
    assert code == 0 and collected["moved"] == 7 and collected["errors"] == []
    assert collected["into"] == str(home / "spool")
    conn = sqlite3.connect(other / "inbox.db")
    assert conn.execute("SELECT COUNT(*) FROM inbox").fetchone()[0] == 0
    conn.close()

    code, ingested = cli("ingest")
    assert code == 0, ingested
    assert stored_tool_use_ids() == sorted(["legacy-1", "legacy-2", "other-0", "other-1", "other-2",
                                            "runtime-1", "temp-1", "own-1"])
    assert stray_check(cli("doctor")[1])["level"] == "ok"
    assert cli("hooks", "collect")[1]["moved"] == 0


def test_an_event_collected_twice_is_stored_once(world):
    """A collect interrupted after writing the spool files but before deleting the inbox rows
    runs again: the drain knows each event by its time and bytes, so nothing is doubled."""
    home, tmp = world["home"], world["tmp"]
    assert CliRunner().invoke(app, ["hooks", "install"]).exit_code == 0
    other = tmp / "other"
    ensure_inbox(str(other / "inbox.db"))
    claude_settings.install(world["user"] / ".claude" / "settings.json",
                            hook_commands.render(sys.executable, hook_commands.CAPTURE_SCRIPT, str(other)))
    hook(hook_commands.render(sys.executable, hook_commands.CAPTURE_SCRIPT, str(other)), {"HOME": str(world["user"])}, "t-1")
    files = [other / name for name in ("inbox.db", "inbox.db-wal") if (other / name).exists()]
    backup = {path: path.read_bytes() for path in files}

    assert cli("hooks", "collect")[1]["moved"] == 1
    for path in (other / "inbox.db-wal", other / "inbox.db-shm"):
        path.unlink(missing_ok=True)
    for path, data in backup.items():  # as if the rows had never been deleted
        path.write_bytes(data)
    assert cli("hooks", "collect")[1]["moved"] == 1
    assert len(list((home / "spool").glob("*.event"))) == 2
    assert cli("ingest")[0] == 0
    assert stored_tool_use_ids() == ["t-1"]


def test_nothing_stray_is_ok_and_a_lookalike_folder_is_left_alone(world):
    tmp = world["tmp"]
    # Another user's (or a symlinked) folder with the temp spool's name is never read.
    target = tmp / "elsewhere"
    target.mkdir()
    (target / "1-2-3.event").write_bytes(b"{}")
    (tmp / "session-tmp" / f"ccrl-spool-{os.getuid()}").symlink_to(target)
    code, report = cli("doctor")
    assert stray_check(report) == {"name": "stray events", "level": "ok", "fix": "",
                                   "detail": f"no captured events outside {world['home']} and its spool folders"}
    assert cli("hooks", "collect")[1] == {"into": str(world["home"] / "spool"), "moved": 0, "places": [], "errors": []}
    assert (target / "1-2-3.event").exists()
