"""``ccrl doctor``: real checks on real files (a fresh data directory, a working store, a
corrupt database and inbox, hooks whose interpreter is gone, a reachable Ollama API server),
through the CLI and its ``--json``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import TRANSCRIPTS
from ollama_server import OllamaTestServer, build_go_renderer

CLOSED_PORT = "http://127.0.0.1:9"  # discard port: nothing answers HTTP there


@pytest.fixture
def home(ccrl_home, tmp_path, monkeypatch):
    """A fresh data directory, an isolated HOME (no Claude Code settings) and no Ollama."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OLLAMA_HOST", CLOSED_PORT)
    (tmp_path / "home").mkdir()
    return ccrl_home


def doctor(*args: str) -> tuple[int, dict]:
    from ccrl.agent.cli import app

    result = CliRunner().invoke(app, ["doctor", "--json", *args])
    # stdout alone: the JSON report; stderr may carry log lines of whatever ran before in this process.
    return result.exit_code, json.loads(result.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_a_fresh_install_works_and_says_what_is_missing(home):
    code, report = doctor()
    checks = by_name(report)
    assert code == 0 and report["status"] == "warning"
    assert checks["python"]["level"] == "ok"
    assert checks["extra [train]"]["level"] == "ok" and checks["extra [gguf]"]["level"] == "ok"
    assert checks["embedded model"]["level"] == "ok"
    assert checks["CUDA"]["level"] in ("ok", "info")
    assert checks["data directory"]["level"] == "info" and "ccrl hooks install" in checks["data directory"]["fix"]
    assert checks["database"]["level"] == "info" and checks["hook inbox"]["level"] == "info"
    assert checks["hooks"]["level"] == "warning" and checks["hooks"]["fix"].startswith("ccrl hooks install")
    assert checks["Ollama"]["level"] == "warning" and CLOSED_PORT in checks["Ollama"]["detail"]
    assert "OLLAMA_HOST" in checks["Ollama"]["fix"]
    assert checks["agent service"]["level"] == "warning" and "ccrl service install" in checks["agent service"]["fix"]
    # No unit installed: nothing to ask systemd or the journal (tests/test_systemd_real.py checks a running one).
    assert not {"service state", "service status", "last cycle", "journal"} & set(checks)
    assert not home.exists()  # looking created nothing


def test_a_working_store_and_installed_hooks(home):
    from ccrl.agent.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["import", str(TRANSCRIPTS / "agentlogs")]).exit_code == 0
    assert runner.invoke(app, ["hooks", "install", "--scope", "user"]).exit_code == 0
    db = home / "ccrl.db"
    before = db.read_bytes()
    code, report = doctor()
    checks = by_name(report)
    assert code == 0
    assert checks["data directory"]["level"] == "ok"
    assert checks["database"]["level"] == "ok" and checks["pending events"]["level"] == "ok"
    assert checks["hooks (user)"]["level"] == "ok"
    assert db.read_bytes() == before  # the write probe took and released a lock, nothing more


def test_broken_store_and_hooks_are_errors_with_fixes(home, tmp_path):
    from ccrl.agent.capture.claude_settings import command_program
    from ccrl.agent.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["hooks", "install", "--scope", "user"]).exit_code == 0
    settings_file = tmp_path / "home" / ".claude" / "settings.json"
    settings = json.loads(settings_file.read_text())
    gone = str(tmp_path / "old-venv" / "bin" / "python")  # a virtual environment deleted since
    for groups in settings["hooks"].values():
        for group in groups:
            for hook in group["hooks"]:
                hook["command"] = hook["command"].replace(command_program(hook["command"]), gone)
    settings_file.write_text(json.dumps(settings))
    (home / "ccrl.db").write_bytes(b"this is not a database" * 100)
    home.chmod(0o755)

    code, report = doctor()
    checks = by_name(report)
    assert code == 1 and report["status"] == "error"
    assert checks["database"]["level"] == "error" and "chmod 600" in checks["database"]["fix"]
    assert checks["data directory"]["level"] == "warning" and checks["data directory"]["fix"] == f"chmod 700 {home}"
    hooks = checks["hooks (user)"]
    assert hooks["level"] == "error" and gone in hooks["detail"] and hooks["fix"].startswith("ccrl hooks install --scope user")


def test_an_unreadable_inbox_spools_and_says_so(home):
    home.mkdir(mode=0o700)
    (home / "inbox.db").write_bytes(b"garbage" * 200)
    code, report = doctor()
    inbox = by_name(report)["hook inbox"]
    assert inbox["level"] == "warning" and "spooled" in inbox["detail"] and "ccrl ingest" in inbox["fix"]
    assert code == 0


def test_ollama_reachable_and_human_output(home, tmp_path_factory, monkeypatch):
    from ccrl.agent.cli import app

    with OllamaTestServer(tmp_path_factory.mktemp("ollama"), build_go_renderer(tmp_path_factory.mktemp("go"))) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        code, report = doctor()
        assert by_name(report)["Ollama"] == {"name": "Ollama", "level": "ok", "detail": f"reachable at {server.host}",
                                             "fix": ""}
        assert ("GET", "/api/tags") in server.requests
        human = CliRunner().invoke(app, ["doctor"])
    assert human.exit_code == 0 and "ccrl doctor" in human.output and "warning(s)" in human.output
