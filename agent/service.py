"""The systemd user unit for the agent: render it, install it, remove it, report on it.

``render_unit`` is the single source of the unit's text; ``systemd/ccrl-agent.service`` in the
repository is its rendering for a ``pip install --user`` / pipx installation (ExecStart in
``~/.local/bin``), and a test keeps the two identical. ``ccrl service install`` renders it with
the absolute path of *this* installation's ``ccrl`` (a virtual environment works without being
on PATH) and the data/config locations in effect, if they are not the defaults.

Hardening: a user unit cannot use the options that need a mount or user namespace
(``ProtectSystem=``, ``PrivateTmp=``…): in user units they imply ``PrivateUsers=``, which hides
the groups that grant access to ``/dev/nvidia*`` and ``/dev/kfd``, and training needs the GPU.
It uses what works unprivileged: no new privileges, seccomp-based restrictions, a private
umask, and a low CPU/IO priority so training never starves the desktop.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "ccrl-agent.service"
WATCHDOG_SEC = 120
STOP_TIMEOUT_SEC = 120
DEFAULT_ROLE = "all"
DEFAULT_EXEC = f"%h/.local/bin/ccrl agent run --role {DEFAULT_ROLE}"


def _exec_word(arg: str) -> str:
    """One ExecStart word: ``%`` (specifiers) and ``$`` (variables) escaped, quoted if needed."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in ' \t"\'\\;'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _environment_line(name: str, value: str) -> str:
    """``Environment="NAME=value"`` (specifiers escaped; ``$`` is literal in Environment=)."""
    assignment = f"{name}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{assignment}"\n'


def check_role(role: str) -> str:
    """``role`` if the agent knows it, else ``ValueError`` naming the roles it knows."""
    from ccrl.agent.scheduler import ROLES

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)} "
                         "(capture: a member's laptop; trainer: the GPU box; all: both on one machine)")
    return role


def agent_argv(executable: Path | str, role: str = DEFAULT_ROLE) -> list[str]:
    """The agent's command line for the unit: ``<ccrl> agent run --role ROLE``. The role is
    always written out, so the unit says what it runs without knowing the CLI's default."""
    return [str(executable), "agent", "run", "--role", check_role(role)]


def installed_role(text: str) -> str | None:
    """The role an installed unit's ExecStart runs: its ``--role`` value, ``all`` for a unit
    written before roles were passed (``agent run`` alone), None when it runs no agent."""
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            words = shlex.split(line[len("ExecStart="):].replace("%%", "%"))
            if "agent" not in words or "run" not in words:
                return None
            for i, word in enumerate(words):
                if word == "--role" and i + 1 < len(words):
                    return words[i + 1]
                if word.startswith("--role="):
                    return word.split("=", 1)[1]
            return DEFAULT_ROLE
    return None


def render_unit(exec_start: Sequence[str] | None = None, environment: Mapping[str, str] | None = None) -> str:
    """The unit file's text. ``exec_start`` is the argv to run (default: ``%h/.local/bin/ccrl
    agent run --role all``, where a ``pip install --user`` or pipx puts it); ``environment``
    adds variables."""
    command = " ".join(_exec_word(a) for a in exec_start) if exec_start else DEFAULT_EXEC
    env_lines = "".join(_environment_line(k, v) for k, v in sorted((environment or {}).items()))
    return f"""\
# ccrl agent: captures Claude Code traces and trains a local model at thresholds.
# `ccrl service install` writes this file with the absolute path of your installation's ccrl
# (this default assumes ~/.local/bin/ccrl). Settings go in ~/.config/ccrl/config.toml.
[Unit]
Description=ccrl agent (learn a local model from Claude Code sessions)
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={command}
Environment=PYTHONUNBUFFERED=1
{env_lines}SyslogIdentifier=ccrl-agent
WatchdogSec={WATCHDOG_SEC}
Restart=on-failure
RestartSec=30
TimeoutStartSec=120
# The agent asks its training child to checkpoint, then exits; SIGKILL only after this.
TimeoutStopSec={STOP_TIMEOUT_SEC}
KillMode=mixed
# An out-of-memory kill of a training child fails that step, not the whole agent.
OOMPolicy=continue
# Background work: lowest useful CPU and IO priority.
Nice=10
CPUSchedulingPolicy=batch
IOSchedulingClass=best-effort
IOSchedulingPriority=7
CPUWeight=20
IOWeight=20
# Hardening that user units allow without a user namespace (which would hide the GPU).
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
UMask=0077

[Install]
WantedBy=default.target
"""


def unit_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "systemd" / "user"


def ccrl_executable() -> Path:
    """The ``ccrl`` script of this installation: beside this interpreter (a venv's bin/), else
    on PATH. Raises ``FileNotFoundError`` when there is none."""
    beside = Path(sys.executable).parent / "ccrl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("ccrl")
    if found:
        return Path(found).absolute()
    raise FileNotFoundError(
        f"no `ccrl` executable beside {sys.executable} or on PATH; reinstall ccrl (pip install -e .) first"
    )


def service_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables the unit must set so the agent uses the data directory, config file and
    database this shell uses. The user manager does not see this shell's environment (nor its
    ``XDG_*`` variables), so anything that differs from the plain defaults is written out."""
    from ccrl.agent.config import Settings, config_file

    env = os.environ if environ is None else environ
    home = Path(os.path.expanduser("~"))
    keep: dict[str, str] = {}
    data_home = Settings().home.expanduser().absolute()
    if data_home != home / ".local" / "share" / "ccrl":
        keep["CCRL_HOME"] = str(data_home)
    config = config_file().expanduser().absolute()
    if config != home / ".config" / "ccrl" / "config.toml":
        keep["CCRL_CONFIG"] = str(config)
    if env.get("CCRL_DATABASE_URL"):
        keep["CCRL_DATABASE_URL"] = env["CCRL_DATABASE_URL"]
    return keep


def shell_only_overrides(environ: Mapping[str, str] | None = None) -> list[str]:
    """``CCRL_*`` setting overrides set in this shell that the service will not see."""
    from ccrl.agent.config import Settings

    env = os.environ if environ is None else environ
    names = {f"CCRL_{name.upper()}" for name in Settings.model_fields}
    carried = {"CCRL_HOME", "CCRL_CONFIG", "CCRL_DATABASE_URL"}
    return sorted(n for n in env if n not in carried and (n in names or (n.startswith("CCRL_") and "__" in n)))


@dataclass
class Systemctl:
    """``systemctl --user``, and whether it can reach a user service manager here."""

    binary: str | None = shutil.which("systemctl")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``systemctl --user ARGS``."""
        if not self.binary:
            raise FileNotFoundError("systemctl")
        return subprocess.run([self.binary, "--user", *args], capture_output=True, text=True, timeout=60)

    def unavailable_reason(self) -> str | None:
        """None when ``systemctl --user`` works, else what it said."""
        if not self.binary:
            return "systemctl is not installed"
        try:
            probe = self.run("show-environment")
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        if probe.returncode != 0:
            return (probe.stderr or probe.stdout).strip() or f"systemctl --user exited {probe.returncode}"
        return None


NO_SYSTEMD_HELP = """\
systemctl --user cannot reach a user service manager here ({reason}).
The unit file is written at {path}, but it is not enabled. What to do:
  - WSL: enable systemd in /etc/wsl.conf ([boot] systemd=true), run `wsl --shutdown`, then
    `ccrl service install` again.
  - A container or a machine without systemd: run the agent under whatever supervises your
    processes, e.g. `ccrl agent run` in tmux, or your container's entry point.
  - A remote login where the user manager is not running: `loginctl enable-linger $USER`
    (or log in on a session), then `ccrl service install` again."""


def write_unit(text: str, directory: Path) -> tuple[Path, bool]:
    """Write the unit atomically; returns (path, changed)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / UNIT_NAME
    if path.is_file() and path.read_text() == text:
        return path, False
    tmp = path.with_name(f".{UNIT_NAME}.tmp")
    # Private: the unit may carry a database URL with a password (the user manager reads it as you).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path, True


def lingering(user: str | None = None) -> bool | None:
    """Whether the user manager outlives logins (``loginctl enable-linger``); None if unknown."""
    user = user or os.environ.get("USER") or ""
    loginctl = shutil.which("loginctl")
    if not loginctl or not user:
        return None
    try:
        out = subprocess.run([loginctl, "show-user", user, "--property=Linger", "--value"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value) if out.returncode == 0 else None


def unit_status() -> dict[str, object]:
    """The unit file, whether it matches this installation, and what systemd says about it."""
    from ccrl.agent.config import get_settings
    from ccrl.agent.lock import agent_lock

    path = unit_dir() / UNIT_NAME
    installed = path.is_file()
    text = path.read_text() if installed else ""
    role = installed_role(text) if installed else None
    try:
        # Up to date: what `ccrl service install --role <the installed role>` would write now.
        expected = render_unit(agent_argv(ccrl_executable(), role or DEFAULT_ROLE), service_environment())
    except (FileNotFoundError, ValueError):
        expected = None
    report: dict[str, object] = {
        "unit": str(path),
        "installed": installed,
        "role": role,
        "up_to_date": installed and expected is not None and text == expected,
    }
    systemctl = Systemctl()
    reason = systemctl.unavailable_reason()
    if reason is not None:
        report["systemd"] = reason
    else:
        shown = systemctl.run("show", UNIT_NAME, "--property=UnitFileState,ActiveState,SubState,MainPID,StatusText")
        props = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
        report.update(
            enabled=props.get("UnitFileState") == "enabled",
            active=f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})",
            main_pid=int(props.get("MainPID") or 0) or None,
            status_text=props.get("StatusText") or None,
        )
    holder = agent_lock(get_settings().home).holder()
    report["agent"] = {"running": holder is not None, "pid": (holder or {}).get("pid")}
    return report
