"""The systemd user unit: `systemd-analyze --user verify` finds nothing to say (warnings count as
failures), the repository copy is what the code renders, and `ccrl service install|uninstall|
status` write the right unit for this installation or explain why systemd cannot take it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ccrl.agent.cli import app
from ccrl.agent.core.config import AgentSettings
import pytest

from ccrl.agent.daemon.service import (
    STOP_TIMEOUT_SEC,
    UNIT_NAME,
    WATCHDOG_SEC,
    agent_argv,
    ccrl_executable,
    installed_role,
    render_unit,
)

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _verify(unit: Path, home: Path, runtime: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install -y systemd (.ci/run does this)"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "notice"}
    return subprocess.run([analyze, "--user", "verify", str(unit)], capture_output=True, text=True, env=env,
                          cwd=unit.parent, timeout=120)


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_repository_unit_is_the_rendered_unit():
    assert (REPO / "systemd" / UNIT_NAME).read_text() == render_unit()


def test_repository_unit_verifies_cleanly(tmp_path):
    # The repository copy runs %h/.local/bin/ccrl: give it a home where that is this ccrl.
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "ccrl").symlink_to(ccrl_executable())
    unit = tmp_path / UNIT_NAME
    shutil.copy(REPO / "systemd" / UNIT_NAME, unit)
    done = _verify(unit, home, tmp_path / "runtime")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stdout + done.stderr


def test_verify_would_catch_a_bad_unit(tmp_path):
    """The check above can fail: a misspelt key and a missing executable are reported."""
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit([str(tmp_path / "missing" / "ccrl"), "agent", "run"]).replace(
        "Restart=on-failure", "Restart=on-failure\nWatchDogSec=3"))
    done = _verify(unit, tmp_path, tmp_path / "runtime")
    output = done.stdout + done.stderr
    assert "Unknown key 'WatchDogSec'" in output
    assert "missing/ccrl" in output and done.returncode != 0


def test_unit_settings_match_the_agent():
    d = _directives(render_unit())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["Restart"] == ["on-failure"] and d["KillMode"] == ["mixed"] and d["OOMPolicy"] == ["continue"]
    assert d["WatchdogSec"] == [str(WATCHDOG_SEC)] and d["TimeoutStopSec"] == [str(STOP_TIMEOUT_SEC)]
    # The child gets its checkpoint time and the agent still exits before systemd's SIGKILL.
    assert AgentSettings().child_stop_timeout_seconds + 15 < STOP_TIMEOUT_SEC
    assert d["Nice"] == ["10"] and d["IOSchedulingClass"] == ["best-effort"]
    assert d["NoNewPrivileges"] == ["yes"] and d["UMask"] == ["0077"]
    # Options that need a user namespace in user units (hiding the GPU's device groups): none.
    for namespaced in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateUsers"):
        assert namespaced not in d
    assert d["WantedBy"] == ["default.target"]


def test_install_writes_this_installations_unit_and_explains_missing_systemd(ccrl_home, tmp_path, monkeypatch):
    config_home = tmp_path / "xdg-config"
    odd_home = tmp_path / "data with space %h"
    monkeypatch.setenv("CCRL_HOME", str(odd_home))
    monkeypatch.setenv("CCRL_AGENT__LOG_LEVEL", "debug")
    result = runner.invoke(app, ["service", "install", "--json"])
    unit = config_home / "systemd" / "user" / UNIT_NAME
    report = json.loads(result.stdout)
    probe = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, text=True)
    if probe.returncode != 0:  # this container: no user manager
        assert result.exit_code == 1
        assert "cannot reach a user service manager" in result.stderr
        assert "loginctl enable-linger" in result.stderr and "wsl.conf" in result.stderr
        assert report["enabled"] is False
    else:
        assert result.exit_code == 0 and report["enabled"] is True
    assert report["shell_only_overrides"] == ["CCRL_AGENT__LOG_LEVEL"]
    text = unit.read_text()
    d = _directives(text)
    assert d["ExecStart"] == [f"{Path(sys.executable).parent / 'ccrl'} agent run --role all"]
    assert report["role"] == "all"
    assert f'"CCRL_HOME={odd_home}"'.replace("%h", "%%h") in d["Environment"]
    assert oct(unit.stat().st_mode & 0o777) == "0o600"
    # What it wrote verifies cleanly, quoting and all.
    done = _verify(unit, tmp_path, tmp_path / "runtime")
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr

    status = runner.invoke(app, ["service", "status", "--json"])
    assert status.exit_code == 0
    state = json.loads(status.stdout)
    assert state["installed"] and state["up_to_date"] and state["agent"] == {"running": False, "pid": None}
    assert state["role"] == "all"

    # Twice = once.
    again = json.loads(runner.invoke(app, ["service", "install", "--json"]).stdout)
    assert again["changed"] is False

    removed = runner.invoke(app, ["service", "uninstall", "--json"])
    assert removed.exit_code == 0 and json.loads(removed.stdout)["removed"] is True
    assert not unit.exists()
    assert json.loads(runner.invoke(app, ["service", "status", "--json"]).stdout)["installed"] is False


def test_exec_paths_with_spaces_and_percent_signs_are_quoted(tmp_path):
    odd = tmp_path / "my tools" / "100%"
    odd.mkdir(parents=True)
    (odd / "ccrl").symlink_to(ccrl_executable())
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit([str(odd / "ccrl"), "agent", "run"]))
    done = _verify(unit, tmp_path, tmp_path / "runtime")
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


@pytest.mark.parametrize("role", ["capture", "trainer", "all"])
def test_install_passes_the_role_and_each_unit_verifies(role, ccrl_home, tmp_path):
    result = runner.invoke(app, ["service", "install", "--role", role, "--no-start", "--json"])
    report = json.loads(result.stdout)
    assert report["role"] == role and report["exec_start"].endswith(f"agent run --role {role}")
    unit = tmp_path / "xdg-config" / "systemd" / "user" / UNIT_NAME
    d = _directives(unit.read_text())
    assert d["ExecStart"] == [f"{Path(sys.executable).parent / 'ccrl'} agent run --role {role}"]
    done = _verify(unit, tmp_path, tmp_path / "runtime")
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr

    state = json.loads(runner.invoke(app, ["service", "status", "--json"]).stdout)
    assert state["role"] == role and state["up_to_date"]
    shown = runner.invoke(app, ["service", "status"])
    assert f"role: {role}" in shown.stdout

    # Another role is another unit: rewritten, not "unchanged".
    other = "capture" if role != "capture" else "trainer"
    again = json.loads(runner.invoke(app, ["service", "install", "--role", other, "--no-start", "--json"]).stdout)
    assert again["changed"] is True and installed_role(unit.read_text()) == other


def test_install_refuses_an_unknown_role_and_writes_nothing(ccrl_home, tmp_path):
    result = runner.invoke(app, ["service", "install", "--role", "gpu"])
    assert result.exit_code == 2
    assert "unknown role 'gpu'" in result.stderr and "all, capture, trainer" in result.stderr
    assert not (tmp_path / "xdg-config" / "systemd" / "user" / UNIT_NAME).exists()


def test_installed_role_reads_old_and_quoted_units(tmp_path):
    assert installed_role(render_unit()) == "all"  # the repository copy
    old = render_unit([str(tmp_path / "bin" / "ccrl"), "agent", "run"])  # before roles were passed
    assert installed_role(old) == "all"
    odd = render_unit(agent_argv(tmp_path / "my tools" / "100%" / "ccrl", "trainer"))
    assert installed_role(odd) == "trainer"
    assert installed_role("[Service]\nExecStart=/usr/bin/true\n") is None


def test_the_database_url_goes_to_a_private_environment_file_not_the_unit(ccrl_home, tmp_path, monkeypatch):
    url = 'postgresql+psycopg://ccrl:pa"ss$w\\rd`1@db.example.org:5432/ccrl'
    monkeypatch.setenv("CCRL_DATABASE_URL", url)
    result = runner.invoke(app, ["service", "install", "--no-start", "--json"])
    report = json.loads(result.stdout)
    unit = tmp_path / "xdg-config" / "systemd" / "user" / UNIT_NAME
    env_file = tmp_path / "xdg-config" / "ccrl" / "agent.env"
    text = unit.read_text()
    assert "pa\"ss" not in text and "db.example.org" not in text and "pa\"ss" not in result.stdout
    assert _directives(text)["EnvironmentFile"] == [str(env_file)]
    assert report["environment_file"] == str(env_file)
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert env_file.read_text() == 'CCRL_DATABASE_URL="postgresql+psycopg://ccrl:pa\\"ss\\$w\\\\rd\\`1@db.example.org:5432/ccrl"\n'
    done = _verify(unit, tmp_path, tmp_path / "runtime")
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    assert json.loads(runner.invoke(app, ["service", "status", "--json"]).stdout)["up_to_date"]
    # Without the variable, a reinstall drops the file and the unit no longer names it.
    monkeypatch.delenv("CCRL_DATABASE_URL")
    again = json.loads(runner.invoke(app, ["service", "install", "--no-start", "--json"]).stdout)
    assert again["changed"] and again["environment_file"] is None and not env_file.exists()
    assert "EnvironmentFile" not in unit.read_text()


def test_memory_limits_are_options_and_bad_sizes_are_refused(ccrl_home, tmp_path):
    result = runner.invoke(app, ["service", "install", "--no-start", "--json", "--memory-high", "6G",
                                 "--memory-max", "80%"])
    unit = tmp_path / "xdg-config" / "systemd" / "user" / UNIT_NAME
    d = _directives(unit.read_text())
    assert (d["MemoryHigh"], d["MemoryMax"]) == (["6G"], ["80%"])
    assert json.loads(result.stdout)["memory_max"] == "80%"
    done = _verify(unit, tmp_path, tmp_path / "runtime")
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    state = json.loads(runner.invoke(app, ["service", "status", "--json"]).stdout)
    assert state["up_to_date"] and (state["memory_high"], state["memory_max"]) == ("6G", "80%")
    before = unit.read_text()
    bad = runner.invoke(app, ["service", "install", "--no-start", "--memory-max", "16 gigs"])
    assert bad.exit_code == 2 and "--memory-max '16 gigs'" in bad.stderr and "12G" in bad.stderr
    assert unit.read_text() == before


def test_the_hardening_a_user_unit_allows():
    d = _directives(render_unit())
    assert d["SystemCallFilter"] == ["@system-service"] and d["SystemCallErrorNumber"] == ["EPERM"]
    assert d["RestrictNamespaces"] == ["yes"] and d["KeyringMode"] == ["private"]
    assert d["TasksMax"] == ["4096"] and "MemoryMax" not in d  # memory limits only when asked for
