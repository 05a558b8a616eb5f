"""``ccrl hooks install|uninstall|status`` on realistic Claude Code settings files.

The expected results are built here by hand from the original file (never with the merge code
under test): install = the original plus one ccrl group per event; uninstall = the original.
The user's entries, keys and number spellings come back exactly; files ccrl cannot read
safely are refused and left byte for byte as they were.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ccrl.agent.capture import claude_settings
from ccrl.agent.capture.claude_settings import HOOK_EVENTS, SettingsFileError
from ccrl.agent.cli import app
from ccrl.hooks import command as hook_commands

from conftest import HOOK_PAYLOADS, REPO

EVENTS = [
    "UserPromptSubmit", "PreToolUse", "PostToolUse", "PostToolUseFailure", "Stop",
    "SubagentStart", "SubagentStop", "SessionStart", "SessionEnd", "PreCompact",
]
TOOL_EVENTS = {"PreToolUse", "PostToolUse", "PostToolUseFailure"}
# ccrl's command for an installation elsewhere (another venv, checkout and data dir) ...
COMMAND = hook_commands.render("/opt/ccrl/.venv/bin/python", "/opt/ccrl/hooks/capture.py", "/home/u/.local/share/ccrl")
# ... and what an earlier ccrl version wrote for one that has been moved away since.
OLD_COMMAND = hook_commands.render_legacy("/old/place/.venv/bin/python", "/old/place/hooks/capture.py", "/old/data")

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
    command = COMMAND

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
    command = COMMAND
    claude_settings.install(path, command)
    first = path.read_bytes()

    again = claude_settings.install(path, command)

    assert not again.changed and again.backup is None
    assert path.read_bytes() == first
    assert len(backups(path)) == 1


def test_reinstall_after_the_venv_moved_replaces_ccrl_entries(tmp_path):
    path = tmp_path / "settings.json"
    write(path, expected_after_install(REALISTIC, OLD_COMMAND))
    new_command = hook_commands.render("/new/place/.venv/bin/python", "/new/place/hooks/capture.py", "/data/ccrl")

    change = claude_settings.install(path, new_command)

    assert change.changed
    assert canonical(json.loads(path.read_text())) == canonical(expected_after_install(REALISTIC, new_command))


def test_ccrl_entry_shared_with_another_command_is_replaced_in_place(tmp_path):
    """Someone added ccrl's command by hand to their own '*' group: the group and its other
    command stay, ccrl's entry gets the new command where it is (keeping the timeout they
    chose), no second ccrl entry appears."""
    original = copy.deepcopy(REALISTIC)
    original["hooks"]["PostToolUse"][1]["hooks"].append({"type": "command", "command": OLD_COMMAND, "timeout": 30})
    path = tmp_path / "settings.json"
    write(path, original)
    command = COMMAND

    claude_settings.install(path, command)

    after = json.loads(path.read_text())
    assert after["hooks"]["PostToolUse"] == [
        REALISTIC["hooks"]["PostToolUse"][0],
        {"matcher": "*", "hooks": [
            {"type": "command", "command": "/usr/local/bin/audit-log --json", "async": True},
            {"type": "command", "command": command, "timeout": 30},
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
        {"type": "command", "command": "guard"}, {"type": "command", "command": OLD_COMMAND}]}]}}
    write(path, kept)
    claude_settings.uninstall(path)
    assert json.loads(path.read_text()) == {"hooks": {"Stop": [{"hooks": []}], "PreToolUse": [
        {"matcher": "Bash", "hooks": [{"type": "command", "command": "guard"}]}]}}


def test_recognises_only_the_commands_ccrl_wrote(tmp_path):
    from ccrl.hooks import capture

    users_own = tmp_path / ".claude" / "hooks" / "capture.py"  # a user's hook with the same name
    users_own.parent.mkdir(parents=True)
    users_own.write_text("import json, sys\nprint(json.load(sys.stdin))\n")
    odd = str(tmp_path / "it's \"odd\" $HOME")
    yes = [
        capture.hook_command(str(tmp_path / "data")),  # today's command, exactly as installed
        capture.hook_command(odd),
        COMMAND,  # another installation's
        hook_commands.render(f"{odd}/bin/python", f"{odd}/hooks/capture.py", odd),
        # The legacy form, exactly as earlier versions wrote it: for this checkout ...
        hook_commands.render_legacy(sys.executable, capture.__file__, None),
        hook_commands.render_legacy(sys.executable, capture.__file__, odd),
        # ... and for one moved away since (its script is gone).
        OLD_COMMAND,
        "/gone/venv/bin/python3 -S -E /gone/checkout/hooks/capture.py",
        # settings.example.json's placeholder, filled in by hand
        "/home/u/.local/share/ccrl-venv/bin/python -S -E /home/u/src/ccrl/hooks/capture.py",
    ]
    no = [
        "/usr/local/bin/audit-log --json",
        'python3 "$CLAUDE_PROJECT_DIR"/.claude/hooks/capture.py',  # the documented pattern
        '"$CLAUDE_PROJECT_DIR"/.claude/hooks/check.sh',
        "python3 .claude/hooks/capture.py",  # relative paths
        "./hooks/capture.py",
        "python3 -S -E hooks/capture.py",
        f"python3 {users_own}",
        f"/usr/bin/python3 -S -E {users_own}",  # legacy shape, but the user's own script
        "/gone/venv/bin/python3 -S -E /gone/checkout/hooks/capture.py --verbose",
        "/gone/venv/bin/python3 -S -E /gone/checkout/hooks/capture.py; echo done",
        "/gone/venv/bin/python3 -E /gone/checkout/hooks/capture.py",
        "/gone/venv/bin/python3 -S -E /gone/$(whoami)/hooks/capture.py",  # not how ccrl quotes
        "/usr/bin/node -S -E /gone/hooks/capture.py",
        "echo ccrl-hook",  # mentions ccrl's hook as an argument
        "logger -t ccrl-hook done",
        "ccrl-hook",
        "/home/u/.venv/bin/ccrl-hook",
        "/home/u/.venv/bin/python -m ccrl.hooks.capture",  # ccrl never wrote these
        "/usr/bin/python3 /opt/site-packages/ccrl/hooks/capture.py",
        COMMAND + " # mine",
        COMMAND.replace("|| true", "|| false"),
        "",
        "'unbalanced",
    ]
    assert [c for c in yes if not claude_settings.is_ccrl_command(c)] == []
    assert [c for c in no if claude_settings.is_ccrl_command(c)] == []


@pytest.mark.parametrize(
    "content",
    [
        b'{"permissions": {"allow": ["Bash(ls)"],},}\n',  # trailing commas: not JSON
        b'{\n  "model": "opus" // comment\n}\n',
        b'{\n  /* block comment */ "model": "opus"\n}\n',
        b'{"env": {"A": NaN}}',
        b'{"env": {"A": Infinity}}',
        b'{"env": {"A": -Infinity}}',
        b"\xff\xfe{}",
        b'\xef\xbb\xbf{"model": "opus"}\n',  # UTF-8 byte order mark: JSON.parse rejects it
        b'{"model": "caf\xe9"}',  # Latin-1, not UTF-8
        b'{"model": "opus", "model": "sonnet"}',  # duplicate keys
        b'{"hooks": {"Stop": [{"hooks": [], "hooks": []}]}}',
        b"[1, 2]",
        b'"text"',
        b"null",
        b'{"hooks": null}',
        b'{"hooks": []}',
        b'{"hooks": "ccrl"}',
        b'{"hooks": {"PostToolUse": {"matcher": "*"}}}',
        b'{"hooks": {"PostToolUse": null}}',
        b'{"hooks": {"Notification": [{"matcher": ""}]}}',  # a group without hooks, in any event
        b'{"hooks": {"Stop": [{"matcher": "", "hooks": "say done"}]}}',
        b'{"hooks": {"Stop": [{"hooks": null}]}}',
        b'{"hooks": {"PreToolUse": [["not", "a", "group"]]}}',
        b'{"hooks": {"PreToolUse": [null]}}',
        b'{"hooks": {"Stop": [{"hooks": ["say done"]}]}}',  # non-object entries
        b'{"hooks": {"Stop": [{"hooks": [null]}]}}',
        b'{"model": "opus"',  # cut short
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser should follow
    ],
)
def test_refuses_a_file_it_cannot_read_safely(tmp_path, content):
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    for change in (lambda: claude_settings.install(path, COMMAND), lambda: claude_settings.uninstall(path)):
        with pytest.raises(SettingsFileError) as refused:
            change()
        message = str(refused.value)
        assert str(path) in message and "Nothing was changed" in message
        assert path.read_bytes() == content
        assert os.listdir(tmp_path) == ["settings.json"]
    status = claude_settings.scope_status("user", path, COMMAND)
    assert status.error and not status.installed


def test_refusals_say_what_is_wrong(tmp_path):
    path = tmp_path / "settings.json"
    cases = {
        b'{"hooks": null}': '"hooks" is null, expected an object',
        b'{"hooks": {"Stop": [{"matcher": ""}]}}': "hooks.Stop[0].hooks is missing, expected a list",
        b'{"hooks": {"Stop": [{"hooks": [7]}]}}': "hooks.Stop[0].hooks[0] is a number, expected an object",
        b'{"a": 1, "a": 2}': "has the key 'a' twice",
        b'\xef\xbb\xbf{}': "byte order mark",
        b'{"a": NaN}': "not valid JSON",
    }
    for content, words in cases.items():
        path.write_bytes(content)
        with pytest.raises(SettingsFileError, match=re.escape(words)):
            claude_settings.install(path, COMMAND)


def test_the_users_hooks_and_keys_survive_install_and_uninstall(tmp_path):
    """Everything that is not an entry ccrl wrote comes back exactly, at every level: commands
    that look a bit like ccrl's, other tools' hooks in the very group ccrl's entry sits in,
    unknown keys on the file, the hooks object, groups and entries, matchers and timeouts."""
    ccrl_mentions = [
        'python3 "$CLAUDE_PROJECT_DIR"/.claude/hooks/capture.py',
        "python3 .claude/hooks/capture.py",
        "echo ccrl-hook >> /tmp/log",
        "/home/u/.venv/bin/ccrl-hook",
        "/home/u/.venv/bin/python -m ccrl.hooks.capture",
    ]
    original = {
        "futureSetting": {"nested": [1, {"deep": None}]},
        "hooks": {
            "PreToolUse": [
                {"matcher": "*", "description": "mine, with ccrl's entry in it", "hooks": [
                    {"type": "command", "command": ccrl_mentions[0], "timeout": 3, "statusMessage": "checking"},
                    {"type": "command", "command": OLD_COMMAND, "timeout": 10},
                    {"type": "prompt", "prompt": "Is this safe? ccrl-hook"},
                    {"type": "command", "command": ccrl_mentions[1], "async": True},
                ]},
                {"matcher": "Bash|Edit", "hooks": [{"type": "command", "command": c} for c in ccrl_mentions[2:]]},
            ],
            "Notification": [{"hooks": [{"type": "command", "command": "notify-send hi", "extra": {"k": [True]}}]}],
            "FutureEvent": [{"matcher": "x", "hooks": []}],
        },
    }
    path = tmp_path / "settings.json"
    write(path, original)

    claude_settings.install(path, COMMAND)

    after = json.loads(path.read_text())
    expected = copy.deepcopy(original)
    expected["hooks"]["PreToolUse"][0]["hooks"][1]["command"] = COMMAND  # updated where it stood
    for event in EVENTS:
        if event != "PreToolUse":
            expected["hooks"].setdefault(event, []).append(ccrl_group(event, COMMAND))
    assert canonical(after) == canonical(expected)
    assert list(after["hooks"])[:3] == list(original["hooks"])

    claude_settings.uninstall(path)
    expected = copy.deepcopy(original)
    del expected["hooks"]["PreToolUse"][0]["hooks"][1]  # ccrl's entry, and only it, is gone
    assert canonical(json.loads(path.read_text())) == canonical(expected)


def test_an_upgrade_replaces_every_legacy_entry_without_duplicates(tmp_path):
    """A file an earlier version wrote (legacy commands, one for this checkout and one for a
    checkout moved away, even a duplicate), plus the user's hooks: one ccrl entry per event
    afterwards, today's, and nothing of the user's lost."""
    from ccrl.hooks import capture

    here = hook_commands.render_legacy(sys.executable, capture.__file__, None)
    original = copy.deepcopy(REALISTIC)
    legacy = expected_after_install(original, here)
    legacy["hooks"]["Stop"].append(ccrl_group("Stop", OLD_COMMAND))
    # Hand-added to a group of the user's with another matcher: removed from there.
    legacy["hooks"]["PostToolUse"][0]["hooks"].append({"type": "command", "command": OLD_COMMAND, "timeout": 10})
    path = tmp_path / "settings.json"
    write(path, legacy)
    assert claude_settings.scope_status("user", path).legacy

    new = capture.hook_command(str(tmp_path / "data"))
    claude_settings.install(path, new)

    after = json.loads(path.read_text())
    assert canonical(after) == canonical(expected_after_install(original, new))
    status = claude_settings.scope_status("user", path, new)
    assert status.up_to_date and not status.legacy and status.commands == [new]
    claude_settings.uninstall(path)
    assert canonical(json.loads(path.read_text())) == canonical(original)


def test_numbers_keep_their_text(tmp_path):
    """``1e400`` is valid JSON (a float too big for a double): read into Python it would be
    ``inf`` and written back as ``Infinity``, which is not JSON. Every number keeps its text."""
    numbers = ["1e400", "-1e400", "1.50", "1E5", "-0", "0.0", "12345678901234567890123456789", "2.5e-324", "10"]
    # Laid out as ccrl writes (json.dumps, indent 2), so that uninstall gives back the same bytes.
    listed = ",\n      ".join(numbers)
    text = f'{{\n  "env": {{\n    "N": [\n      {listed}\n    ]\n  }},\n  "cleanupPeriodDays": 1e400\n}}\n'
    path = tmp_path / "settings.json"
    path.write_text(text)

    claude_settings.install(path, COMMAND)

    written = path.read_text()
    strict = json.loads(written, parse_constant=lambda name: pytest.fail(f"{name} written"))
    assert "Infinity" not in written and "NaN" not in written
    as_written = json.loads(written, parse_float=str, parse_int=str)
    assert as_written["env"]["N"] == numbers and as_written["cleanupPeriodDays"] == "1e400"
    assert strict["hooks"]["Stop"][0]["hooks"][0]["timeout"] == 10

    claude_settings.uninstall(path)
    assert path.read_text() == text


def test_strings_come_back_with_their_meaning(tmp_path):
    path = tmp_path / "settings.json"
    path.write_bytes(b'{"env": {"A": "caf\\u00e9 \\ud83d\\ude00 \\ud800 \\"q\\" \\\\ \\u0000"}}')
    before = json.loads(path.read_bytes())
    claude_settings.install(path, COMMAND)
    claude_settings.uninstall(path)
    assert json.loads(path.read_bytes()) == before


def test_owner_and_mode_are_kept(tmp_path):
    path = tmp_path / "settings.json"
    original = write(path, REALISTIC, mode=0o604)
    if os.geteuid() == 0:
        os.chown(path, 4321, 4322)
    change = claude_settings.install(path, COMMAND)
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o604
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert change.backup.read_bytes() == original and stat.S_IMODE(change.backup.stat().st_mode) == 0o604


def test_install_takes_only_a_command_it_can_recognise_again(tmp_path):
    path = tmp_path / "settings.json"
    with pytest.raises(ValueError, match="not a command ccrl writes"):
        claude_settings.install(path, "/usr/bin/python3 -m ccrl.hooks.capture")
    assert not path.exists()


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


# ----------------------------------------------------------------------------------------------
# The real CLI, with the real hook command, into an isolated HOME


def test_cli_install_status_uninstall_in_the_user_scope(home, ccrl_home):
    from ccrl.hooks.capture import hook_command

    path = home / ".claude" / "settings.json"
    write(path, REALISTIC)
    command = hook_command(str(ccrl_home))

    result = run_cli("hooks", "install", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["changed"] and report["command"] == command and report["path"] == str(path)
    assert canonical(json.loads(path.read_text())) == canonical(expected_after_install(REALISTIC, command))
    # The data dir, spool dir and inbox are ready (and private) before the first event arrives.
    assert report["inbox"] == str(ccrl_home / "inbox.db")
    assert stat.S_IMODE((ccrl_home / "inbox.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(ccrl_home.stat().st_mode) == 0o700
    assert stat.S_IMODE((ccrl_home / "spool").stat().st_mode) == 0o700

    again = run_cli("hooks", "install")
    assert again.exit_code == 0 and "already installed" in again.stdout
    assert len(backups(path)) == 1

    status = json.loads(run_cli("hooks", "status", "--json", "--project-dir", str(home / "proj")).stdout)
    assert status["expected_command"] == command
    user, project, local = status["scopes"]
    assert (user["scope"], project["scope"], local["scope"]) == ("user", "project", "local")
    assert user["installed"] and user["runnable"] and user["up_to_date"] and user["events"] == EVENTS
    assert user["missing_files"] == [] and user["commands"] == [command]
    assert not project["installed"] and project["events"] == [] and not project["exists"]

    result = run_cli("hooks", "uninstall")
    assert result.exit_code == 0 and "Removed" in result.stdout
    assert canonical(json.loads(path.read_text())) == canonical(REALISTIC)


def test_cli_project_and_local_scopes(home, tmp_path):
    project = tmp_path / "repo"
    project.mkdir()
    for scope, name in (("project", "settings.json"), ("local", "settings.local.json")):
        result = run_cli("hooks", "install", "--scope", scope, "--project-dir", str(project))
        assert result.exit_code == 0, result.output
        data = json.loads((project / ".claude" / name).read_text())
        assert list(data["hooks"]) == EVENTS
    assert not (home / ".claude").exists()
    status = json.loads(run_cli("hooks", "status", "--json", "--project-dir", str(project)).stdout)
    assert [s["installed"] for s in status["scopes"]] == [False, True, True]


def test_cli_refuses_invalid_json_without_touching_the_file(home):
    path = home / ".claude" / "settings.json"
    path.parent.mkdir()
    content = b'{\n  "permissions": {"allow": ["Bash(ls)"]},\n  // my note\n}\n'
    path.write_bytes(content)

    result = run_cli("hooks", "install")

    assert result.exit_code == 1
    assert "not valid JSON" in result.stderr and str(path) in result.stderr.replace("\n", "")
    assert "Traceback" not in result.output
    assert path.read_bytes() == content
    assert os.listdir(path.parent) == ["settings.json"]
    # Status reports the problem instead of failing.
    status = json.loads(run_cli("hooks", "status", "--json").stdout)
    assert "not valid JSON" in status["scopes"][0]["error"]


def test_status_flags_a_hook_whose_interpreter_is_gone(home):
    path = home / ".claude" / "settings.json"
    gone = "/nonexistent/venv/bin/python"
    write(path, expected_after_install({}, f"{gone} -S -E /nonexistent/ccrl/hooks/capture.py"))
    user = json.loads(run_cli("hooks", "status", "--json").stdout)["scopes"][0]
    assert user["installed"] and not user["runnable"] and not user["up_to_date"]
    assert user["missing_files"] == [gone, "/nonexistent/ccrl/hooks/capture.py"]
    assert user["interpreters"] == [{"path": gone, "exists": False}]
    # Re-installing points every event at today's interpreter: one entry each, no leftovers.
    assert run_cli("hooks", "install").exit_code == 0
    user = json.loads(run_cli("hooks", "status", "--json").stdout)["scopes"][0]
    assert user["runnable"] and user["up_to_date"] and len(user["commands"]) == 1


def test_the_installed_command_runs_and_the_event_lands_in_the_inbox(home, ccrl_home, tmp_path):
    """Run the command exactly as Claude Code does (sh -c), from another directory, with no venv
    on PATH and no CCRL_HOME in the environment: the command itself must carry both."""
    assert run_cli("hooks", "install").exit_code == 0
    settings = json.loads((home / ".claude" / "settings.json").read_text())
    payloads = json.loads((HOOK_PAYLOADS / "seeknal_2026-02" / "pre_tool_use.json").read_text())
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}

    for event in ("PreToolUse", "Stop"):
        command = settings["hooks"][event][-1]["hooks"][0]["command"]
        payload = dict(payloads[0], hook_event_name=event)
        proc = subprocess.run(["sh", "-c", command], input=json.dumps(payload).encode(), cwd=elsewhere,
                              env=env, capture_output=True, timeout=30)
        assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b""

    conn = sqlite3.connect(ccrl_home / "inbox.db")
    rows = [json.loads(r[0]) for r in conn.execute("SELECT payload FROM inbox ORDER BY id")]
    conn.close()
    assert [r["hook_event_name"] for r in rows] == ["PreToolUse", "Stop"]
    assert all(r["session_id"] == payloads[0]["session_id"] for r in rows)
    # Stored in the inbox, not spooled (glob of a missing directory is empty too).
    assert list((ccrl_home / "spool").glob("*.event")) == []


def test_settings_example_shows_the_installed_block(home, ccrl_home):
    """settings.example.json has exactly what install writes, but for the command itself."""
    example = json.loads((REPO / "settings.example.json").read_text())
    placeholder = example["hooks"]["Stop"][0]["hooks"][0]["command"]
    assert canonical(example) == canonical(expected_after_install({}, placeholder))
    assert claude_settings.is_ccrl_command(placeholder)  # a hand-edited copy is replaced on install

    assert run_cli("hooks", "install").exit_code == 0
    installed = json.loads((home / ".claude" / "settings.json").read_text())
    command = installed["hooks"]["Stop"][0]["hooks"][0]["command"]
    assert canonical(installed) == canonical(expected_after_install({}, command))
    assert canonical(installed).replace(json.dumps(command), json.dumps(placeholder)) == canonical(example)


def test_hooks_command_prints_the_exact_command(ccrl_home):
    from ccrl.hooks.capture import hook_command

    result = run_cli("hooks", "command")
    assert result.exit_code == 0 and result.stdout.strip() == hook_command(str(ccrl_home))


def test_with_the_default_data_dir_the_command_still_pins_ccrl_home(home, monkeypatch):
    """No CCRL_HOME anywhere: the command pins the XDG default of the installing shell, and
    the hook writes there from Claude Code's environment (see also test_hook_command.py)."""
    from ccrl.agent.core.config import reset_settings_cache

    monkeypatch.delenv("CCRL_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    reset_settings_cache()
    assert run_cli("hooks", "install").exit_code == 0
    command = json.loads((home / ".claude" / "settings.json").read_text())["hooks"]["PostToolUse"][0]["hooks"][0]["command"]
    assert hook_commands.parse(command).home == str(home / ".local" / "share" / "ccrl")
    payload = {"session_id": "s-default", "cwd": str(home), "hook_event_name": "PostToolUse", "tool_name": "Read"}
    proc = subprocess.run(["sh", "-c", command], input=json.dumps(payload).encode(),
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home)}, capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == b""
    conn = sqlite3.connect(home / ".local" / "share" / "ccrl" / "inbox.db")
    assert [json.loads(r[0])["session_id"] for r in conn.execute("SELECT payload FROM inbox")] == ["s-default"]
    conn.close()


def test_hand_made_entries_that_run_ccrls_hook_are_kept_and_named(home, tmp_path):
    """An entry the user wrote themselves that runs ccrl's hook (the console script, the module,
    ccrl's capture.py) is theirs: install keeps it, and says that events are captured twice."""
    from ccrl.hooks import capture

    users_own = tmp_path / ".claude" / "hooks" / "capture.py"
    users_own.parent.mkdir(parents=True)
    users_own.write_text("print('mine')\n")
    hand_made = [
        "ccrl-hook",
        "/home/u/.venv/bin/ccrl-hook",
        "CCRL_HOME=/x /home/u/.venv/bin/python -m ccrl.hooks.capture",
        f"python3 {capture.__file__}",
        f"env CCRL_DISABLE=0 /usr/bin/python3 -E {capture.__file__}",
    ]
    not_hand_made = [
        COMMAND,
        OLD_COMMAND,
        "echo ccrl-hook",
        "logger -t ccrl-hook done",
        'python3 "$CLAUDE_PROJECT_DIR"/.claude/hooks/capture.py',
        f"python3 {users_own}",
        "python -m myccrl.hooks.capture",
        "python -m ccrl.hooks.capture_extra",
    ]
    assert [c for c in hand_made if not claude_settings.runs_ccrl_hook(c)] == []
    assert [c for c in not_hand_made if claude_settings.runs_ccrl_hook(c)] == []

    path = home / ".claude" / "settings.json"
    original = {"hooks": {"PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": c}
                                                                        for c in hand_made + not_hand_made[2:]]}]}}
    write(path, original)
    result = run_cli("hooks", "install", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hand_made"] == hand_made
    after = json.loads(path.read_text())
    assert after["hooks"]["PreToolUse"][0] == original["hooks"]["PreToolUse"][0]
    human = run_cli("hooks", "install")
    assert "runs ccrl's hook as well" in human.stderr and "ccrl-hook" in human.stderr


def test_status_and_doctor_point_at_a_legacy_installation(home, monkeypatch):
    """Entries in the form earlier versions wrote still capture, but would block Claude Code
    once ccrl is moved away: status and doctor say so, and install replaces them."""
    from ccrl.hooks import capture

    path = home / ".claude" / "settings.json"
    write(path, expected_after_install(REALISTIC, hook_commands.render_legacy(sys.executable, capture.__file__, None)))

    status = json.loads(run_cli("hooks", "status", "--json").stdout)["scopes"][0]
    assert status["installed"] and status["runnable"] and status["legacy"] and status["homes"] == [None]
    human = run_cli("hooks", "status")
    assert "earlier ccrl" in " ".join(human.stderr.split()) and "ccrl hooks install --scope user" in human.stderr
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # nothing answers: no wait on a real one
    doctor = json.loads(run_cli("doctor", "--json").stdout)
    (check,) = [c for c in doctor["checks"] if c["name"] == "hooks (user)"]
    assert check["level"] == "warning" and "blocks every Claude Code session" in check["detail"]

    assert run_cli("hooks", "install").exit_code == 0
    status = json.loads(run_cli("hooks", "status", "--json").stdout)["scopes"][0]
    assert status["up_to_date"] and not status["legacy"] and len(status["commands"]) == 1
