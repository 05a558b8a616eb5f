"""Logs and journald never carry captured text.

A distinctive secret-like prompt (and tool output) goes through the installed hook, the drain
(whole, truncated and not-UTF-8 events, so quarantine runs too), ingest, a purge and
``purge --derived``; every journald entry they log (native protocol, read from a socket the
test owns) and every line the agent writes in its other modes must be free of it. The same
for ``ccrl agent once`` run as systemd runs it (stderr with ``<N>`` prefixes, debug level).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import pytest

from ccrl.hooks.capture import hook_command

SECRET = "hunter2-ZX9-prompt-only-4be1c"  # a captured prompt: in the store, never in a log
OUTPUT = "tool-output-only-d83f02"  # a captured tool result
SESSION = "sess-logs-1"


def _hook(data: bytes) -> None:
    proc = subprocess.run(["/bin/sh", "-c", hook_command()], input=data, capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def _capture_session() -> None:
    """A turn through the hook as Claude Code sends it, plus a truncated and a non-UTF-8 event."""
    base = {"session_id": SESSION, "transcript_path": f"/nonexistent/{SESSION}.jsonl", "cwd": "/work/logs"}
    prompt = {**base, "hook_event_name": "UserPromptSubmit", "prompt": f"please use {SECRET} to deploy",
              "prompt_id": "p1"}
    _hook(json.dumps(prompt).encode())
    _hook(json.dumps({**base, "hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_use_id": "tu1",
                      "tool_input": {"command": f"echo {SECRET}"}, "prompt_id": "p1"}).encode())
    _hook(json.dumps({**base, "hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_use_id": "tu1",
                      "tool_input": {"command": f"echo {SECRET}"}, "tool_response": {"stdout": OUTPUT},
                      "prompt_id": "p1"}).encode())
    _hook(json.dumps({**base, "hook_event_name": "Stop", "prompt_id": "p1"}).encode())
    _hook(json.dumps({**prompt, "prompt": f"{SECRET} again " * 20}).encode()[:-25])
    _hook(json.dumps({**prompt, "prompt": "PLACEHOLDER"}).encode().replace(b"PLACEHOLDER", SECRET.encode() + b"\xff"))


@pytest.fixture
def journal(tmp_path):
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


def _drain_socket(sock: socket.socket) -> list[bytes]:
    import array

    entries = []
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(1 << 22, socket.CMSG_SPACE(4))
        except BlockingIOError:
            return entries
        for _level, _kind, raw in ancdata:  # a large entry travels in a sealed memfd
            fd = array.array("i", raw[:4])[0]
            try:
                data = os.pread(fd, os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)
        entries.append(data)


def _pipeline() -> None:
    from ccrl.agent.capture.drain import ensure_local_stores
    from ccrl.agent.capture.ingest import ingest
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.operations.purge import PurgeTarget, execute_purge
    from ccrl.agent.operations.purge_derived import remove_derived

    settings = get_settings()
    ensure_local_stores(settings)
    _capture_session()
    report = ingest(settings)
    assert report.drain["stored"] == 4 and report.drain["quarantined"] == 2
    assert report.traces_created == 1
    result = execute_purge(settings, PurgeTarget(mode="session", session_id=SESSION))
    assert result.removed["traces"] == 1 and result.removed["quarantined"] == 2
    remove_derived(settings)


@pytest.mark.parametrize("mode", ["journal", "plain"])
def test_drain_ingest_and_purge_log_no_captured_text(ccrl_home, tmp_path, monkeypatch, journal, mode):
    import structlog

    from ccrl.agent.core.logging_setup import configure_logging

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    path, sock = journal
    stream = io.StringIO()
    configure_logging("debug", mode=mode, journal_socket=path, stream=stream)
    structlog.get_logger("ccrl.test").info("log check started", session_id=SESSION)
    _pipeline()
    entries = _drain_socket(sock)
    logged = b"\n".join(entries) + stream.getvalue().encode()
    # The check can fail: the pipeline logged (at least the marker line, with the session id).
    assert SESSION.encode() in logged
    assert (len(entries) > 0) == (mode == "journal")
    assert SECRET.encode() not in logged and OUTPUT.encode() not in logged


def test_agent_once_as_systemd_runs_it_logs_no_captured_text(ccrl_home, tmp_path, monkeypatch):
    from ccrl.agent.capture.drain import ensure_local_stores
    from ccrl.agent.core.config import get_settings

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    ensure_local_stores(get_settings())
    _capture_session()
    env = {**os.environ, "INVOCATION_ID": "0123456789abcdef", "CCRL_AGENT__LOG_LEVEL": "debug"}
    proc = subprocess.run([sys.executable, "-c", "from ccrl.agent.cli import main; main()", "agent", "once"],
                          env=env, capture_output=True, timeout=300)
    # It ingested the turn and logged so, in the prefixed form journald reads (too few traces
    # for a training cycle: it says so and exits 1).
    assert b"<6>ingested traces_created=1" in proc.stderr, proc.stderr.decode(errors="replace")
    assert SECRET.encode() not in proc.stderr + proc.stdout and OUTPUT.encode() not in proc.stderr + proc.stdout
