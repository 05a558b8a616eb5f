"""The systemd user unit for the agent: render it, install it, remove it, report on it.

``render_unit`` is the single source of the unit's text; ``systemd/ccrl-agent.service`` in the
repository is its rendering for a ``pip install --user`` / pipx installation (ExecStart in
``~/.local/bin``), and a test keeps the two identical. ``ccrl service install`` renders it with
the absolute path of *this* installation's ``ccrl`` (a virtual environment works without being
on PATH) and the data/config locations in effect, if they are not the defaults.

Hardening: a user unit cannot use the options that need a mount or user namespace
(``ProtectSystem=``, ``PrivateTmp=``…): in user units they imply ``PrivateUsers=``, which hides
the groups that grant access to ``/dev/nvidia*`` and ``/dev/kfd``, and training needs the GPU.
It uses what works unprivileged: no new privileges, seccomp-based restrictions (a system-call
allow list, no namespaces), a private keyring, a cap on tasks, optional memory limits, a private
umask, and a low CPU/IO priority so training never starves the desktop. A database URL (it may
hold a password) goes into a 0600 ``EnvironmentFile=``, never into the unit's text.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
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
# A bound on processes and threads (torch starts one thread per core, data loaders a process per
# worker, accelerate a process per GPU): far above what training needs, far below a fork bomb.
TASKS_MAX = 4096
ENV_FILE_NAME = "agent.env"
# Variables that may carry a secret: kept out of the unit, in its EnvironmentFile.
SECRET_VARIABLES = ("CCRL_DATABASE_URL",)
# systemd's memory sizes: bytes with an optional K/M/G/T suffix (base 1024), a percentage of
# physical memory, or "infinity".
_MEMORY_SIZE = re.compile(r"^(\d+(\.\d+)?[KMGT]?|\d+(\.\d+)?%|infinity)$")


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


def check_memory(value: str | None, option: str) -> str | None:
    """``value`` when systemd takes it as a memory size (``12G``, ``80%``, ``infinity``), else
    ``ValueError`` saying what is accepted."""
    if value is None:
        return None
    if not _MEMORY_SIZE.match(value):
        raise ValueError(f"{option} {value!r}: use bytes with an optional K, M, G or T suffix (12G), "
                         "a percentage of the machine's memory (75%), or infinity")
    return value


def _env_file_value(value: str) -> str:
    """A value for an EnvironmentFile line: double-quoted, with the characters systemd's parser
    unescapes there (``"``, ``\\``, `````, ``$``) escaped, so any password survives."""
    return '"' + re.sub(r'(["\\`$])', r"\\\1", value) + '"'


def render_env_file(environment: Mapping[str, str]) -> str:
    """The EnvironmentFile's text: one ``NAME="value"`` line per variable."""
    return "".join(f"{name}={_env_file_value(value)}\n" for name, value in sorted(environment.items()))


def check_role(role: str) -> str:
    """``role`` if the agent knows it, else ``ValueError`` naming the roles it knows."""
    from ccrl.agent.daemon.scheduler import ROLES

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


def render_unit(exec_start: Sequence[str] | None = None, environment: Mapping[str, str] | None = None, *,
                environment_file: Path | None = None, memory_high: str | None = None,
                memory_max: str | None = None) -> str:
    """The unit file's text. ``exec_start`` is the argv to run (default: ``%h/.local/bin/ccrl
    agent run --role all``, where a ``pip install --user`` or pipx puts it); ``environment``
    adds variables (never secrets: those go in ``environment_file``, read by the manager);
    ``memory_high``/``memory_max`` set the cgroup's memory throttle and hard limit."""
    command = " ".join(_exec_word(a) for a in exec_start) if exec_start else DEFAULT_EXEC
    env_lines = "".join(_environment_line(k, v) for k, v in sorted((environment or {}).items()))
    if environment_file is not None:
        env_lines += f"EnvironmentFile={str(environment_file).replace('%', '%%')}\n"
    memory = ""
    if memory_high or memory_max:
        memory = ("# Memory: reclaimed hard above MemoryHigh; above MemoryMax the OOM killer stops the largest\n"
                  "# process (the training child: its step fails, OOMPolicy=continue keeps the agent).\n"
                  + (f"MemoryHigh={memory_high}\n" if memory_high else "")
                  + (f"MemoryMax={memory_max}\n" if memory_max else ""))
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
TasksMax={TASKS_MAX}
{memory}# Hardening that user units allow without a user namespace (which would hide the GPU).
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
KeyringMode=private
SystemCallArchitectures=native
# The system calls of ordinary services; anything else fails with EPERM instead of killing training.
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
UMask=0077

[Install]
WantedBy=default.target
"""


def journal_args(uid: int | None = None) -> list[str]:
    """The journalctl arguments that select the agent's entries. A normal user reads their own
    journal (``--user -u``, journalctl(1)); journald keeps the entries of root and system users
    (uid below 1000, Debian's and most distributions' SYS_UID_MAX + 1) in the system journal,
    where ``--user-unit`` (``_SYSTEMD_USER_UNIT=``) finds them."""
    uid = os.getuid() if uid is None else uid
    return ["--user-unit", "ccrl-agent"] if uid < 1000 else ["--user", "-u", "ccrl-agent"]


def journal_command(uid: int | None = None) -> str:
    """``journalctl`` with ``journal_args``, to show a user."""
    return " ".join(["journalctl", *journal_args(uid)])


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
    from ccrl.agent.core.config import Settings, config_file

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
    from ccrl.agent.core.config import Settings

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


def env_file_path(environ: Mapping[str, str] | None = None) -> Path:
    """The unit's EnvironmentFile: ``$XDG_CONFIG_HOME/ccrl/agent.env`` (``~/.config/ccrl/agent.env``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ccrl" / ENV_FILE_NAME


@dataclass
class ServiceFiles:
    """What ``ccrl service install`` writes: the unit, and the EnvironmentFile when a variable
    may hold a secret (None otherwise)."""

    unit: str
    env_file: str | None


def service_files(exec_start: Sequence[str], environment: Mapping[str, str], *, memory_high: str | None = None,
                  memory_max: str | None = None) -> ServiceFiles:
    """The unit for ``exec_start`` with ``environment``: secrets (``SECRET_VARIABLES``) in the
    EnvironmentFile, the rest in ``Environment=`` lines."""
    secret = {k: v for k, v in environment.items() if k in SECRET_VARIABLES}
    plain = {k: v for k, v in environment.items() if k not in SECRET_VARIABLES}
    unit = render_unit(exec_start, plain, environment_file=env_file_path() if secret else None,
                       memory_high=memory_high, memory_max=memory_max)
    return ServiceFiles(unit, render_env_file(secret) if secret else None)


def installed_memory(text: str) -> tuple[str | None, str | None]:
    """The MemoryHigh and MemoryMax an installed unit sets (None where it sets none)."""
    values = dict(line.split("=", 1) for line in text.splitlines() if line.startswith(("MemoryHigh=", "MemoryMax=")))
    return values.get("MemoryHigh"), values.get("MemoryMax")


def write_private(path: Path, text: str) -> bool:
    """Write ``path`` atomically with mode 0600 (the user manager reads it as you); False when it
    already held ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text and stat.S_IMODE(path.stat().st_mode) == 0o600:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)  # an old temp file may have had another mode
    os.replace(tmp, path)
    return True


def write_unit(text: str, directory: Path) -> tuple[Path, bool]:
    """Write the unit atomically, private; returns (path, changed)."""
    path = directory / UNIT_NAME
    return path, write_private(path, text)


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
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.core.lock import agent_lock

    path = unit_dir() / UNIT_NAME
    installed = path.is_file()
    text = path.read_text() if installed else ""
    role = installed_role(text) if installed else None
    high, limit = installed_memory(text)
    try:
        # Up to date: what `ccrl service install` with the installed role and limits would write now.
        expected = service_files(agent_argv(ccrl_executable(), role or DEFAULT_ROLE), service_environment(),
                                 memory_high=high, memory_max=limit)
    except (FileNotFoundError, ValueError):
        expected = None
    env_path = env_file_path()
    env_text = env_path.read_text() if env_path.is_file() else None
    report: dict[str, object] = {
        "unit": str(path),
        "installed": installed,
        "role": role,
        "memory_high": high,
        "memory_max": limit,
        "up_to_date": installed and expected is not None and text == expected.unit
        and (expected.env_file is None or env_text == expected.env_file),
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


# What `ccrl doctor` reads about the running unit (systemctl --user show).
RUNTIME_PROPERTIES = ("ActiveState", "SubState", "Result", "NRestarts", "StatusText", "MainPID",
                      "ActiveEnterTimestamp", "ExecMainCode", "ExecMainStatus")


def runtime_state(systemctl: Systemctl | None = None) -> dict[str, str] | None:
    """The unit's state as the manager sees it (``RUNTIME_PROPERTIES``); None when
    ``systemctl --user`` cannot reach a manager."""
    systemctl = systemctl or Systemctl()
    if systemctl.unavailable_reason() is not None:
        return None
    shown = systemctl.run("show", UNIT_NAME, *(f"--property={p}" for p in RUNTIME_PROPERTIES))
    if shown.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def journal_entries(*args: str, limit: int = 20) -> list[dict[str, str]] | None:
    """The agent's journal entries selected by ``args`` (``-p err``, ``--since -24h``), newest
    last, as journalctl's JSON; None when journalctl is missing or fails."""
    journalctl = shutil.which("journalctl")
    if not journalctl:
        return None
    try:
        done = subprocess.run([journalctl, "--no-pager", "-o", "json", "-n", str(limit), *journal_args(), *args],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    entries = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries
