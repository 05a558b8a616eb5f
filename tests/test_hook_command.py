"""The command ``ccrl hooks install`` writes, run the way Claude Code runs it (``sh -c`` with the
event on stdin): it never blocks a session, not even after the installation was moved or
deleted, and it always writes where the agent reads (``CCRL_HOME`` pinned).

Installations here are real copies (the hook's files and an interpreter link in a temp folder),
installed into a real settings file; then their files are deleted or moved for real.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ccrl.agent.capture import claude_settings
from ccrl.agent.cli import app
from ccrl.hooks import command as hook_commands
from ccrl.hooks.capture import hook_command
from ccrl.hooks.inbox import ensure_inbox

from conftest import HOOK_PAYLOADS, REPO

REAL_PAYLOAD = json.loads((HOOK_PAYLOADS / "seeknal_2026-02" / "pre_tool_use.json").read_text())[0]


def inbox_payloads(home: Path) -> list[dict]:
    conn = sqlite3.connect(home / "inbox.db")
    try:
        return [json.loads(row[0]) for row in conn.execute("SELECT payload FROM inbox ORDER BY id")]
    finally:
        conn.close()


def run_as_claude_code(command: str, payload: bytes, env: dict[str, str] | None = None,
                       cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``sh -c COMMAND`` with the payload written to its stdin, as Claude Code runs a hook.

    Written by hand (not ``communicate``, which swallows a broken pipe): a hook that exits
    without reading its stdin makes the write fail, and that fails the test."""
    proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env if env is not None else {"PATH": "/usr/bin:/bin"},
                            cwd=cwd)
    proc.stdin.write(payload)  # BrokenPipeError here = the event was never read
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def installation(tmp_path: Path) -> dict[str, Path]:
    """A ccrl installation of its own: the hook's files copied into a checkout folder and an
    interpreter in a venv-like bin folder (a link to this Python), a data dir with its inbox,
    and a user settings file with ccrl's hook installed for them."""
    checkout = tmp_path / "moved away" / "it's ccrl"  # spaces and a quote: quoting must hold
    shutil.copytree(REPO / "hooks", checkout / "hooks", ignore=shutil.ignore_patterns("__pycache__"))
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python3"
    python.symlink_to(os.path.realpath(sys.executable))
    home = tmp_path / "data home"
    ensure_inbox(str(home / "inbox.db"))
    settings = tmp_path / "user" / ".claude" / "settings.json"
    command = hook_commands.render(str(python), str(checkout / "hooks" / "capture.py"), str(home))
    claude_settings.install(settings, command)
    return {"checkout": checkout, "python": python, "venv": tmp_path / "venv", "home": home, "settings": settings}


def installed(settings: Path, event: str = "PreToolUse") -> str:
    groups = json.loads(settings.read_text())["hooks"][event]
    (command,) = [h["command"] for g in groups for h in g["hooks"] if claude_settings.is_ccrl_hook(h)]
    return command


def test_the_installed_command_captures_from_a_copy(installation):
    command = installed(installation["settings"])
    proc = run_as_claude_code(command, json.dumps(REAL_PAYLOAD).encode())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert inbox_payloads(installation["home"]) == [REAL_PAYLOAD]


@pytest.mark.parametrize("remove", ["script", "handler", "interpreter", "interpreter target", "venv", "checkout"])
def test_a_removed_installation_never_blocks_claude_code(installation, tmp_path, remove):
    """Delete or move each part the hook needs: every event still ends with status 0 and no
    output at all (exit 2 would block the tool call or erase the prompt), and the event on
    stdin is still read (a 1 MB payload: far more than a pipe buffer)."""
    checkout, python = installation["checkout"], installation["python"]
    if remove == "script":
        (checkout / "hooks" / "capture.py").unlink()
    elif remove == "handler":  # a half-removed package: the script is there, its code is not
        (checkout / "hooks" / "handler.py").unlink()
    elif remove == "interpreter":
        python.unlink()
    elif remove == "interpreter target":  # the venv's link points at a Python uninstalled since
        python.unlink()
        python.symlink_to(tmp_path / "uninstalled" / "python3.11")
    elif remove == "venv":
        installation["venv"].rename(tmp_path / "venv-moved")
    elif remove == "checkout":
        shutil.rmtree(checkout.parent)
    payload = json.dumps({**REAL_PAYLOAD, "tool_input": {"command": "x" * 1_000_000}}).encode()
    for event in claude_settings.HOOK_EVENTS:
        proc = run_as_claude_code(installed(installation["settings"], event), payload)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b""), (event, proc)
    assert inbox_payloads(installation["home"]) == []


def test_the_legacy_form_is_what_blocked_claude_code(installation):
    """Why the command is wrapped: the form earlier versions wrote exits 2 (= block) once its
    script is gone. ``ccrl hooks install`` replaces such entries (test_hooks_install.py)."""
    checkout, python = installation["checkout"], installation["python"]
    legacy = hook_commands.render_legacy(str(python), str(checkout / "hooks" / "capture.py"), str(installation["home"]))
    (checkout / "hooks" / "capture.py").unlink()
    proc = subprocess.run(["/bin/sh", "-c", legacy], input=b"{}", capture_output=True)
    assert proc.returncode == 2 and b"can't open file" in proc.stderr


def test_a_closed_stdin_is_no_problem_for_a_removed_installation(installation):
    (installation["checkout"] / "hooks" / "capture.py").unlink()
    command = installed(installation["settings"])
    closed = subprocess.run(["/bin/sh", "-c", f"{{ {command}; }} <&-"], capture_output=True, timeout=30)
    assert (closed.returncode, closed.stdout, closed.stderr) == (0, b"", b"")


def test_ccrl_home_is_pinned_whatever_claude_codes_environment_says(home_dirs):
    """Installed from a shell with one XDG_DATA_HOME (or none), run by a Claude Code with
    another (or none): the event lands in the data directory the agent reads."""
    user, runner = home_dirs
    for installing_xdg, hook_xdg in ((None, user / "claude-xdg"), (user / "shell-xdg", None),
                                     (user / "shell-xdg", user / "claude-xdg")):
        env = {"HOME": str(user), "PATH": "/usr/bin:/bin"}
        if installing_xdg:
            env["XDG_DATA_HOME"] = str(installing_xdg)
        result = runner(["hooks", "install", "--json"], env)
        assert result.exit_code == 0, result.output
        command = json.loads(result.stdout)["command"]
        agent_home = Path(installing_xdg or user / ".local" / "share") / "ccrl"
        assert hook_commands.parse(command).home == str(agent_home)
        assert installed(user / ".claude" / "settings.json") == command

        hook_env = {"HOME": str(user), "PATH": "/usr/bin:/bin"}
        if hook_xdg:
            hook_env["XDG_DATA_HOME"] = str(hook_xdg)
        marker = f"{installing_xdg}->{hook_xdg}"
        proc = run_as_claude_code(command, json.dumps({**REAL_PAYLOAD, "tool_use_id": marker}).encode(), hook_env)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
        assert inbox_payloads(agent_home)[-1]["tool_use_id"] == marker
        assert not (user / "claude-xdg").exists()  # nothing went where the agent never looks
        runner(["hooks", "uninstall"], env)


@pytest.fixture
def home_dirs(tmp_path, monkeypatch, ccrl_home):
    """A HOME of its own, and a way to run the CLI with a given environment (no CCRL_HOME)."""
    from ccrl.agent.core.config import reset_settings_cache

    user = tmp_path / "user"
    user.mkdir()

    def run(args: list[str], env: dict[str, str]):
        monkeypatch.delenv("CCRL_HOME", raising=False)
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        reset_settings_cache()
        return CliRunner().invoke(app, args)

    return user, run


def test_hook_command_form(ccrl_home, tmp_path):
    command = hook_command(str(ccrl_home))
    parsed = hook_commands.parse(command)
    assert parsed == (os.path.abspath(sys.executable), str(REPO / "hooks" / "capture.py"), str(ccrl_home), False)
    assert command == hook_commands.render(*parsed[:3])
    odd = tmp_path / "it's \"my\" $data `x`"
    assert hook_commands.parse(hook_command(str(odd))).home == str(odd)
    # A relative or ~ home is made absolute: the hook runs from the session's directory.
    assert hook_commands.parse(hook_command("~/x")).home == os.path.expanduser("~/x")
    assert hook_commands.parse(hook_command("rel")).home == os.path.abspath("rel")


def test_hooks_command_prints_what_install_writes(ccrl_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    printed = CliRunner().invoke(app, ["hooks", "command"])
    assert printed.exit_code == 0 and printed.stdout == hook_command(str(ccrl_home)) + "\n"
    assert CliRunner().invoke(app, ["hooks", "install"]).exit_code == 0
    assert installed(tmp_path / ".claude" / "settings.json") == printed.stdout.rstrip("\n")


def test_capture_py_starts_with_the_marker_legacy_recognition_reads():
    """A legacy entry whose script exists is ccrl's only if that script starts like ccrl's
    capture.py (every version so far has): changing its first line would make an upgrade
    leave such entries behind, next to the new one."""
    assert Path(hook_commands.CAPTURE_SCRIPT).read_bytes().startswith(hook_commands.CAPTURE_SCRIPT_MARKER)
    assert hook_commands.is_capture_script(hook_commands.CAPTURE_SCRIPT, missing=False)
