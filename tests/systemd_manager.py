"""A real systemd user manager and journald for the tests, started as ordinary processes.

Machines without systemd as PID 1 (this one, CI's) can still run the ``systemd`` package's own
binaries: ``/run/systemd/system`` makes ``systemd --user`` believe the system booted with systemd,
``systemd-journald`` gives it a journal, and a private ``XDG_RUNTIME_DIR`` and ``HOME`` keep it
away from anything of the user's (see ../shared/docs/systemd-real.md). The manager runs in a
cgroup of its own, so the cgroups it creates (and the processes it moves) stay inside that one;
started at the root of the hierarchy it would move every process there into its ``init.scope``.

Everything started here is stopped by its PID, and everything created (the marker directory,
journald's socket directory, the cgroups) is removed, only if it was created here. Where systemd
cannot run (not root, binaries missing) the tests skip with the reason, except in CI (``CI=true``),
where that is a failure.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

MARKER = Path("/run/systemd/system")
JOURNAL_DIR = Path("/run/systemd/journal")
JOURNAL_SOCKET = JOURNAL_DIR / "socket"
JOURNAL_FILES = Path("/run/log/journal")  # journald keeps its files here until flushed to /var
SYSTEMD = Path("/usr/lib/systemd/systemd")
JOURNALD = Path("/usr/lib/systemd/systemd-journald")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# One manager on the machine at a time: two would both claim the same unit cgroups and journald.
LOCK_FILE = Path("/tmp/ccrl-tests-systemd-manager.lock")


def unavailable_reason() -> str | None:
    """Why a real user manager cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return ("a `systemd --user` started outside a login session needs a delegated cgroup, which only "
                "root has here (see ../shared/docs/systemd-real.md); run the tests as root, as CI does")
    if Path("/proc/1/comm").read_text().strip() == "systemd":
        return ("this machine runs systemd as PID 1: the tests start their own manager and journald, which "
                "would clash with the real ones (and with your own user services)")
    for binary in (SYSTEMD, JOURNALD):
        if not binary.is_file():
            return f"{binary} is missing: apt-get install -y systemd (scripts/system-deps.sh)"
    for tool in ("systemctl", "journalctl", "systemd-analyze"):
        if not shutil.which(tool):
            return f"{tool} is missing: apt-get install -y systemd"
    if not (CGROUP_ROOT / "cgroup.procs").exists() and not any(CGROUP_ROOT.glob("*/cgroup.procs")):
        return f"no cgroup file system at {CGROUP_ROOT}"
    return None


def _journald_listening() -> bool:
    """A journald already serves the native socket (e.g. a machine booted with systemd)."""
    if not JOURNAL_SOCKET.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(JOURNAL_SOCKET))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _hierarchies() -> list[Path]:
    """The cgroup hierarchies to give the manager a cgroup in (v2 alone, or each v1 + unified)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return sorted(p.parent for p in CGROUP_ROOT.glob("*/cgroup.procs") if p.parent.name != "cpuset")


def _remove_cgroup_tree(top: Path) -> None:
    """rmdir ``top`` and everything below it, deepest first (cgroup directories only go by rmdir)."""
    if not top.is_dir():
        return
    for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()
        except OSError:
            pass
    try:
        top.rmdir()
    except OSError:
        pass


class UserManager:
    """A running ``systemd --user`` with its own HOME and XDG_RUNTIME_DIR."""

    def __init__(self, home: Path, runtime: Path, pid: int, cgroup: str, log: Path) -> None:
        self.home = home
        self.runtime = runtime
        self.pid = pid
        self.cgroup = cgroup
        self.log = log

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a command run as this manager's user (nothing else inherited)."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "LANG": "C.UTF-8",
            "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0",
            **extra,
        }

    def systemctl(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``systemctl --user ARGS`` against this manager."""
        done = subprocess.run(["systemctl", "--user", *args], env=self.env(), capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"systemctl --user {' '.join(args)} exited {done.returncode}: "
                                 f"{done.stdout}{done.stderr}\n{self.journal_tail()}")
        return done

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl --user show UNIT -p ...`` as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """``journalctl ARGS -o json`` entries (the journal this manager's units log to)."""
        done = subprocess.run(["journalctl", "--no-pager", "-o", "json", *args], env=self.env(),
                              capture_output=True, text=True, timeout=120)
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def journal_tail(self, lines: int = 60) -> str:
        """The last journal lines, for failure messages."""
        done = subprocess.run(["journalctl", "--no-pager", "-n", str(lines)], env=self.env(),
                              capture_output=True, text=True, timeout=120)
        return done.stdout

    def cgroup_dir(self, unit: str, hierarchy: str = "") -> Path:
        """The cgroup folder of ``unit`` (under ``app.slice``) in a hierarchy (``memory``, ``pids``; ``""``
        for cgroup v2 alone, ``unified`` for the v2 part of a hybrid layout)."""
        root = CGROUP_ROOT / hierarchy if hierarchy else CGROUP_ROOT
        return root / self.cgroup.lstrip("/") / "app.slice" / unit

    def wait_for(self, what: str, check, timeout: float, interval: float = 0.3):  # noqa: ANN001, ANN201
        """Poll ``check`` until it returns something true; fail with the journal's tail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.journal_tail(120)}")


class SystemdHost:
    """What the manager needs from the machine: the marker directory and a journald, set up
    around each manager and taken down after it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._count = 0

    @contextmanager
    def manager(self, home: Path | None = None) -> Iterator[UserManager]:
        """Start journald (unless one runs) and ``systemd --user`` with ``home``; stop both by PID
        at the end and remove what was created."""
        self._count += 1
        base = self.root / f"manager-{self._count}"
        home = home or base / "home"
        runtime = base / "runtime"
        home.mkdir(parents=True, exist_ok=True)
        runtime.mkdir(parents=True, mode=0o700)
        runtime.chmod(0o700)
        LOCK_FILE.touch(exist_ok=True)
        # SIGTERM (a CI timeout, a developer's kill) unwinds like Ctrl-C, so the teardown below runs.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        with open(LOCK_FILE) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            made_marker = not MARKER.exists()
            made_journal_dir = not JOURNAL_DIR.exists()
            made_journal_files = not JOURNAL_FILES.exists()
            journald: subprocess.Popen | None = None
            manager: subprocess.Popen | None = None
            # Where a login puts the user manager: journald then names its units _SYSTEMD_USER_UNIT.
            cgroup = f"/user.slice/user-{os.getuid()}.slice/user@{os.getuid()}.service"
            made_cgroups: list[Path] = []
            try:
                if made_marker:
                    MARKER.mkdir(parents=True)
                if not _journald_listening():
                    journald = subprocess.Popen([str(JOURNALD)], stdout=open(base / "journald.log", "w"),  # noqa: SIM115
                                                stderr=subprocess.STDOUT, start_new_session=True)
                    _wait(lambda: _journald_listening(), 30, "journald's socket")
                procs = []
                for hierarchy in _hierarchies():
                    folder = hierarchy / cgroup.lstrip("/")
                    if folder.exists() and _cgroup_tree_busy(folder):
                        raise AssertionError(f"{folder} holds processes: another user manager runs on this machine")
                    _remove_cgroup_tree(folder)  # left empty by a run that was killed before its teardown
                    top = next(p for p in (folder.parent.parent, folder.parent, folder) if not p.exists())
                    try:
                        folder.mkdir(parents=True)
                    except OSError:
                        continue
                    made_cgroups.append(top)
                    procs.append(str(folder / "cgroup.procs"))
                # The shell moves itself into the new cgroups, then becomes the manager.
                script = 'for f in "$@"; do echo $$ > "$f" 2>/dev/null; done; exec ' + str(SYSTEMD) + " --user"
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime),
                       "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/sh",
                       # As under user@.service: the manager's own messages about units go to the journal.
                       "SYSTEMD_LOG_TARGET": "journal"}
                log = base / "manager.log"
                manager = subprocess.Popen(["sh", "-c", script, "sh", *procs], env=env, stdout=open(log, "w"),  # noqa: SIM115
                                           stderr=subprocess.STDOUT, start_new_session=True)
                user = UserManager(home, runtime, manager.pid, cgroup, log)

                def running() -> bool:
                    if manager.poll() is not None:
                        raise AssertionError(f"systemd --user exited {manager.returncode}: {log.read_text()}")
                    state = subprocess.run(["systemctl", "--user", "is-system-running"], env=user.env(),
                                           capture_output=True, text=True, timeout=30).stdout.strip()
                    return state in ("running", "degraded")

                _wait(running, 60, "the user manager")
                yield user
            finally:
                for proc in (manager, journald):
                    if proc is not None and proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)  # the manager stops its units, then exits
                        try:
                            proc.wait(timeout=150)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
                for folder in made_cgroups:
                    _remove_cgroup_tree(folder)
                if made_journal_dir:
                    shutil.rmtree(JOURNAL_DIR, ignore_errors=True)
                if made_journal_files and journald is not None:
                    shutil.rmtree(JOURNAL_FILES, ignore_errors=True)
                if made_marker:
                    try:
                        MARKER.rmdir()
                    except OSError:
                        pass
                fcntl.flock(lock, fcntl.LOCK_UN)
                signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cgroup_tree_busy(top: Path) -> bool:
    """Whether any cgroup under ``top`` still holds a process."""
    return any(procs.read_text().strip() for procs in top.rglob("cgroup.procs"))


def _wait(check, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def systemd_host(tmp_path_factory) -> SystemdHost:
    """The machine's side of a real user manager, or a skip saying why it cannot run (a failure in CI)."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the real systemd tests: {reason}", pytrace=False)
        pytest.skip(f"no real systemd user manager here: {reason}")
    return SystemdHost(tmp_path_factory.mktemp("systemd"))
