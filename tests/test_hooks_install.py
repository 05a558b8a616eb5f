"""``ccrl hooks install|uninstall|status`` on realistic Claude Code settings files.

The expected results are built here by hand from the original file (never with the merge code
under test): install = the original plus one ccrl group per event; uninstall = the original.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ccrl.agent import claude_settings
from ccrl.agent.claude_settings import HOOK_EVENTS, SettingsFileError
from ccrl.agent.cli import app

from conftest import HOOK_PAYLOADS, REPO

EVENTS = [
    "UserPromptSubmit", "PreToolUse", "PostToolUse", "PostToolUseFailure", "Stop",
    "SubagentStart", "SubagentStop", "SessionStart", "SessionEnd", "PreCompact",
]
TOOL_EVENTS = {"PreToolUse", "PostToolUse", "PostToolUseFailure"}
OLD_COMMAND = "/old/place/.venv/bin/python -m ccrl.hooks.capture"

# A settings file as people really have them: permissions, env, a status line, their own hooks
# in ccrl's events (a Bash guard, a formatter on edits, an async "*" audit hook), other events.
REALISTIC = {
    "$schema": "https://json.schemastore.org/claude-code-settings.json",
    "model": "opus",
    "permissions": {
        "allow": ["Bash(npm run test:*)", "Read(~/.zshrc)", "WebFetch(domain:docs.python.org)"],
        "deny": ["Read(./.env)", "Read(./secrets/**)"],
        "defaultMode": "acceptEdits",
    },
    "env": {"CLAUDE_CODE_ENABLE_TELEMETRY": "0", "GREETING": "héllo ✓", "MAX_THINKING_TOKENS": "8000"},
    "statusLine": {"type": "command", "command": "~/.claude/statusline.sh", "padding": 0},
    "cleanupPeriodDays": 99,
    "includeCoAuthoredBy": False,
    "hooks": {
        "PreToolUse": [
            {"matcher": "Bash", "hooks": [{"type": "command", "command": "~/.claude/hooks/check-bash.sh", "timeout": 5}]}
        ],
        "PostToolUse": [
            {
                "matcher": "Edit|MultiEdit|Write",
                "hooks": [{"type": "command", "command": "npx prettier --write \"$CLAUDE_FILE_PATHS\""}],
            },
            {"matcher": "*", "hooks": [{"type": "command", "command": "/usr/local/bin/audit-log --json", "async": True}]},
        ],
        "Notification": [{"hooks": [{"type": "command", "command": "notify-send 'Claude Code' 'Awaiting input'"}]}],
        "Stop": [{"hooks": [{"type": "command", "command": "say done"}]}],
    },
}


def canonical(data: object) -> str:
    """Deep comparison that also tells 1 from true (Python's == does not)."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def ccrl_group(event: str, command: str) -> dict:
    entry = {"type": "command", "command": command, "timeout": 10}
    return {"matcher": "*", "hooks": [entry]} if event in TOOL_EVENTS else {"hooks": [entry]}


def expected_after_install(original: dict, command: str) -> dict:
    expected = copy.deepcopy(original)
    hooks = expected.setdefault("hooks", {})
    for event in EVENTS:
        hooks.setdefault(event, []).append(ccrl_group(event, command))
    return expected


def write(path: Path, data: object, mode: int = 0o644) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()
    path.write_bytes(raw)
    path.chmod(mode)
    return raw


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".ccrl-backup-*"))


@pytest.fixture
def home(tmp_path, monkeypatch, ccrl_home) -> Path:
    """An isolated HOME (so the user scope is ~/.claude/settings.json inside tmp)."""
    user_home = tmp_path / "user"
    user_home.mkdir()
    monkeypatch.setenv("HOME", str(user_home))
    return user_home


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def installed_command(data: dict) -> str:
    return data["hooks"]["PostToolUse"][-1]["hooks"][0]["command"]


def test_event_list_is_the_documented_one():
    assert list(HOOK_EVENTS) == EVENTS


# ----------------------------------------------------------------------------------------------
# The merge on files


def test_install_keeps_everything_else_and_adds_one_group_per_event(tmp_path):
    path = tmp_path / ".claude" / "settings.json"
    original_bytes = write(path, REALISTIC, mode=0o640)
    command = "/opt/ccrl/.venv/bin/python -m ccrl.hooks.capture"

    change = claude_settings.install(path, command)

    assert change.changed and not change.created
    after = json.loads(path.read_text())
    assert canonical(after) == canonical(expected_after_install(REALISTIC, command))
    # Top-level keys keep their order (a merge should not reshuffle someone's file).
    assert list(after)[: len(REALISTIC)] == list(REALISTIC)
    # Atomic write: same permissions, backup of the old bytes with the same permissions, no temp file.
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert backups(path) == [change.backup]
    assert change.backup.read_bytes() == original_bytes
    assert stat.S_IMODE(change.backup.stat().st_mode) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, change.backup.name])


def test_install_twice_is_install_once(tmp_path):
    path = tmp_path / "settings.json"
    write(path, REALISTIC)
    command = "/opt/ccrl/.venv/bin/python -m ccrl.hooks.capture"
    claude_settings.install(path, command)
    first = path.read_bytes()

    again = claude_settings.install(path, command)

    assert not again.changed and again.backup is None
    assert path.read_bytes() == first
    assert len(backups(path)) == 1


def test_reinstall_after_the_venv_moved_replaces_ccrl_entries(tmp_path):
    path = tmp_path / "settings.json"
    write(path, expected_after_install(REALISTIC, OLD_COMMAND))
    new_command = "CCRL_HOME=/data/ccrl /new/place/.venv/bin/python -m ccrl.hooks.capture"

    change = claude_settings.install(path, new_command)

    assert change.changed
    assert canonical(json.loads(path.read_text())) == canonical(expected_after_install(REALISTIC, new_command))


def test_ccrl_entry_shared_with_another_command_is_replaced_in_place(tmp_path):
    """Someone added ccrl's command by hand to their own '*' group: the group and its other
    command stay, ccrl's entry is updated where it is, no second ccrl entry appears."""
    original = copy.deepcopy(REALISTIC)
    original["hooks"]["PostToolUse"][1]["hooks"].append({"type": "command", "command": OLD_COMMAND, "timeout": 30})
    path = tmp_path / "settings.json"
    write(path, original)
    command = "/opt/ccrl/.venv/bin/python -m ccrl.hooks.capture"

    claude_settings.install(path, command)

    after = json.loads(path.read_text())
    assert after["hooks"]["PostToolUse"] == [
        REALISTIC["hooks"]["PostToolUse"][0],
        {"matcher": "*", "hooks": [
            {"type": "command", "command": "/usr/local/bin/audit-log --json", "async": True},
            {"type": "command", "command": command, "timeout": 10},
        ]},
    ]
    expected = expected_after_install(REALISTIC, command)
    expected["hooks"]["PostToolUse"] = after["hooks"]["PostToolUse"]
    assert canonical(after) == canonical(expected)


def test_uninstall_restores_the_original(tmp_path):
    path = tmp_path / "settings.json"
    write(path, REALISTIC, mode=0o600)
    claude_settings.install(path, OLD_COMMAND)
    installed = path.read_bytes()

    change = claude_settings.uninstall(path)

    assert change.changed
    after = json.loads(path.read_text())
    assert canonical(after) == canonical(REALISTIC)
    assert list(after) == list(REALISTIC)
    assert list(after["hooks"]) == list(REALISTIC["hooks"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert change.backup.read_bytes() == installed
    # Nothing left to remove: a second uninstall changes nothing.
    assert not claude_settings.uninstall(path).changed


def test_uninstall_drops_containers_it_emptied_only(tmp_path):
    path = tmp_path / "settings.json"
    write(path, {"env": {"A": "1"}})
    claude_settings.install(path, OLD_COMMAND)
    claude_settings.uninstall(path)
    assert json.loads(path.read_text()) == {"env": {"A": "1"}}

    # An empty group that was there before stays: ccrl did not empty it.
    kept = {"hooks": {"Stop": [{"hooks": []}], "PreToolUse": [{"matcher": "Bash", "hooks": [
        {"type": "command", "command": "guard"}, {"type": "command", "command": "ccrl-hook"}]}]}}
    write(path, kept)
    claude_settings.uninstall(path)
    assert json.loads(path.read_text()) == {"hooks": {"Stop": [{"hooks": []}], "PreToolUse": [
        {"matcher": "Bash", "hooks": [{"type": "command", "command": "guard"}]}]}}


def test_recognises_ccrl_commands_in_their_forms():
    yes = [
        "/home/u/.venv/bin/python -m ccrl.hooks.capture",
        "CCRL_HOME='/data/my ccrl' /usr/bin/python3 -I -m ccrl.hooks.capture",
        "/home/u/.venv/bin/ccrl-hook",
        "ccrl-hook",
        "/usr/bin/python3 -c 'from ccrl.hooks.capture import main; main()'",
        "/usr/bin/python3 /opt/site-packages/ccrl/hooks/capture.py",
    ]
    no = [
        "/usr/local/bin/audit-log --json",
        "python -m myccrl.hooks.capture_extra",
        "python /srv/other/hooks/capture.py",
        "echo ccrl-hooks",
    ]
    assert all(claude_settings.is_ccrl_command(c) for c in yes)
    assert not any(claude_settings.is_ccrl_command(c) for c in no)


@pytest.mark.parametrize(
    "content",
    [
        b'{"permissions": {"allow": ["Bash(ls)"],},}\n',  # trailing commas: not JSON
        b'{"env": {"A": NaN}}',
        b"\xff\xfe{}",
        b"[1, 2]",
        b'{"hooks": []}',
        b'{"hooks": {"PostToolUse": {"matcher": "*"}}}',
        b'{"hooks": {"Stop": [{"matcher": "", "hooks": "say done"}]}}',
        b'{"hooks": {"PreToolUse": [["not", "a", "group"]]}}',
    ],
)
def test_refuses_a_file_it_cannot_read_safely(tmp_path, content):
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    with pytest.raises(SettingsFileError):
        claude_settings.install(path, OLD_COMMAND)
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["settings.json"]


def test_install_creates_missing_file_and_directories_privately(tmp_path):
    path = tmp_path / "proj" / ".claude" / "settings.local.json"
    change = claude_settings.install(path, OLD_COMMAND)
    assert change.changed and change.created and change.backup is None
    assert canonical(json.loads(path.read_text())) == canonical(expected_after_install({}, OLD_COMMAND))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Uninstalling from a missing file creates nothing.
    missing = tmp_path / "other" / "settings.json"
    assert not claude_settings.uninstall(missing).changed
    assert not missing.exists()


def test_empty_file_counts_as_empty_settings(tmp_path):
    path = tmp_path / "settings.json"
    path.write_bytes(b"  \n")
    claude_settings.install(path, OLD_COMMAND)
    assert canonical(json.loads(path.read_text())) == canonical(expected_after_install({}, OLD_COMMAND))


def test_symlinked_settings_file_is_updated_at_its_target(tmp_path):
    """Dotfile managers symlink ~/.claude/settings.json: the link must stay a link."""
    target = tmp_path / "dotfiles" / "claude-settings.json"
    write(target, REALISTIC)
    link = tmp_path / ".claude" / "settings.json"
    link.parent.mkdir()
    link.symlink_to(target)

    claude_settings.install(link, OLD_COMMAND)

    assert link.is_symlink()
    assert canonical(json.loads(target.read_text())) == canonical(expected_after_install(REALISTIC, OLD_COMMAND))


def test_keeps_the_files_indentation(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"env": {"A": "1"}}, indent="\t") + "\n")
    claude_settings.install(path, OLD_COMMAND)
    assert path.read_text().startswith('{\n\t"env": {\n\t\t"A": "1"\n\t},\n\t"hooks"')
