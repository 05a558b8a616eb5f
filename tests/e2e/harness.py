"""Run the real Claude Code CLI as an isolated user, against a scripted Messages API.

``make setup`` installs the pinned npm package into ``.cache/claude-code/`` (git-ignored). The
CLI runs against :class:`~tests.e2e.scripted_api.ScriptedAPI` as an isolated user
(:class:`Sandbox`): its own ``HOME`` (so ``~/.claude`` and ccrl's default data dir live in the
test's temp dir), its own ``TMPDIR``, and an environment built from scratch, so nothing from the
developer's machine leaks in and nothing leaks out.

No pytest here: the e2e tests (fixtures in conftest.py) and the demo, which produces sample
sessions the same way, share this module.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .scripted_api import ScriptedAPI

REPO = Path(__file__).resolve().parents[2]
CLAUDE_CODE_DIR = Path(os.environ.get("CCRL_CLAUDE_CODE_DIR", REPO / ".cache" / "claude-code"))
# ccrl's console scripts, from the environment running the tests (the project's venv).
SCRIPTS_DIR = Path(sys.executable).parent
# A safety net against a hung CLI, not a performance assertion.
RUN_TIMEOUT_S = 300  # an upper bound: a claude run takes seconds, but CI machines are slow and busy


def _platform_package() -> str:
    """The name suffix of Claude Code's native package for this machine (as its install.cjs picks)."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system().lower())
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    musl = system == "linux" and not platform.libc_ver()[0]
    return f"{system}-{machine}" + ("-musl" if musl else "")


class ClaudeCodeMissing(RuntimeError):
    """The pinned Claude Code CLI is not installed (``make setup`` installs it)."""


def find_claude() -> Path:
    """The native ``claude`` binary installed by ``make setup``; raises ClaudeCodeMissing if absent."""
    package_dir = CLAUDE_CODE_DIR / "node_modules" / "@anthropic-ai" / f"claude-code-{_platform_package()}"
    binary = package_dir / "claude"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ClaudeCodeMissing(
            f"The Claude Code CLI is not installed (looked for {binary}). "
            "Run `make setup` (it runs `npm install` of the pinned @anthropic-ai/claude-code "
            "into .cache/claude-code/ and needs the npm registry)."
        )
    return binary


class CommandFailed(RuntimeError):
    """A ``claude`` or ``ccrl`` process exited non-zero; the message holds its output."""


@dataclass
class ClaudeRun:
    """The outcome of one ``claude -p`` process."""

    args: list[str]
    cwd: Path
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    def check(self) -> ClaudeRun:
        """Raise CommandFailed, with Claude's own output, when the process did not succeed."""
        if self.returncode != 0:
            raise CommandFailed(
                f"claude exited {self.returncode} in {self.cwd}\nargs: {self.args}\n"
                f"stdout: {self.stdout.decode(errors='replace')}\nstderr: {self.stderr.decode(errors='replace')}"
            )
        return self


@dataclass
class PendingRun:
    """A ``claude`` process that was started and not yet waited for."""

    proc: subprocess.Popen
    args: list[str]
    cwd: Path
    started: float

    def wait(self) -> ClaudeRun:
        """Wait for the process (killing it after RUN_TIMEOUT_S) and collect its output."""
        try:
            stdout, stderr = self.proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            stderr += f"\n[killed after {RUN_TIMEOUT_S}s]".encode()
        return ClaudeRun(self.args, self.cwd, self.proc.returncode, stdout, stderr, time.monotonic() - self.started)


def claude_version(binary: Path) -> str:
    """``claude --version``, checked against the version of the npm package it came from."""
    wrapper = json.loads((CLAUDE_CODE_DIR / "node_modules" / "@anthropic-ai" / "claude-code" / "package.json").read_text())
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or not out.stdout.startswith(wrapper["version"]):
        raise ClaudeCodeMissing(f"`{binary} --version` gave {out.stdout!r} {out.stderr!r}, expected {wrapper['version']}")
    return out.stdout.strip()


class Sandbox:
    """An isolated user account in a temp dir: runs ``claude`` and ``ccrl`` with its own HOME.

    ccrl's data dir is the default one for that HOME (``~/.local/share/ccrl``): the tests use the
    same paths a real user gets, with no ``CCRL_HOME`` override.
    """

    def __init__(self, root: Path, api: ScriptedAPI, claude: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.tmp = root / "tmp"
        self.api = api
        self.claude_bin = claude
        for directory in (self.home, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)

    @property
    def ccrl_home(self) -> Path:
        """ccrl's data dir for this user (the XDG default)."""
        return self.home / ".local" / "share" / "ccrl"

    @property
    def settings_file(self) -> Path:
        """Claude Code's user settings file."""
        return self.home / ".claude" / "settings.json"

    def env(self) -> dict[str, str]:
        """The whole environment of the processes this sandbox starts (nothing inherited but PATH)."""
        return {
            "PATH": f"{SCRIPTS_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "NO_COLOR": "1",
            "ANTHROPIC_BASE_URL": self.api.url,
            "ANTHROPIC_API_KEY": "sk-ant-e2e-not-a-real-key",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "COLUMNS": "200",
        }

    def project(self, name: str) -> Path:
        """A fresh scratch project directory."""
        path = self.root / "projects" / name
        path.mkdir(parents=True, exist_ok=False)
        return path

    def start_claude(self, prompt: str, cwd: Path, *, continue_session: bool = False) -> PendingRun:
        """Start ``claude -p PROMPT`` in ``cwd`` without waiting (several can run at once)."""
        args = [str(self.claude_bin), "-p"]
        if continue_session:
            args.append("--continue")
        args += [prompt, "--allowedTools", "Read", "Edit", "Grep", "Bash", "Glob"]
        proc = subprocess.Popen(
            args, cwd=cwd, env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        return PendingRun(proc, args, cwd, time.monotonic())

    def claude(self, prompt: str, cwd: Path, *, continue_session: bool = False) -> ClaudeRun:
        """Run ``claude -p PROMPT`` in ``cwd`` and wait for it."""
        return self.start_claude(prompt, cwd, continue_session=continue_session).wait()

    def ccrl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the installed ``ccrl`` command as this user."""
        out = subprocess.run(
            [str(SCRIPTS_DIR / "ccrl"), *args], env=self.env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
        if check and out.returncode != 0:
            raise CommandFailed(f"ccrl {' '.join(args)} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out

    def install_hooks(self) -> None:
        """``ccrl hooks install --scope user``, exactly as a user runs it."""
        self.ccrl("hooks", "install", "--scope", "user")

    def inbox_events(self) -> list[dict[str, Any]]:
        """The raw events the hook stored in the inbox (parsed), in arrival order.

        Read with plain sqlite3, independently of ccrl's ingest. ``ccrl ingest`` empties the
        inbox, so call this before it.
        """
        import sqlite3

        path = self.ccrl_home / "inbox.db"
        if not path.exists():
            return []
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("SELECT payload FROM inbox ORDER BY id").fetchall()
        finally:
            conn.close()
        return [json.loads(bytes(r[0])) for r in rows]

    def trace_list(self) -> list[dict[str, Any]]:
        """``ccrl traces list --json`` (every trace)."""
        return json.loads(self.ccrl("traces", "list", "--json", "--limit", "0").stdout)

    def traces(self) -> list[dict[str, Any]]:
        """Every trace as ``ccrl traces show ID --json`` prints it, in the order of ``traces list``."""
        from concurrent.futures import ThreadPoolExecutor

        def show(trace_id: Any) -> dict[str, Any]:
            return json.loads(self.ccrl("traces", "show", str(trace_id), "--json").stdout)

        # Each ccrl process spends most of its time starting Python: run a few at once.
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(show, [t["id"] for t in self.trace_list()]))
