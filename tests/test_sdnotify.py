"""The sd_notify protocol: messages as systemd receives them, on a datagram socket of our own."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from ccrl.agent.daemon.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    """A filesystem datagram socket standing where systemd's notify socket would be."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def _fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(65536).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_messages_arrive_as_key_value_datagrams(listener):
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("waiting for traces")
    assert _fields(sock) == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "waiting for traces"}
    assert n.status("cycle 3: SFT 40%\nsecond line")
    assert _fields(sock) == {"STATUS": "cycle 3: SFT 40% second line"}
    assert n.watchdog()
    assert _fields(sock) == {"WATCHDOG": "1"}
    assert n.extend_timeout(2.5)
    assert _fields(sock) == {"EXTEND_TIMEOUT_USEC": "2500000"}
    assert n.stopping("stopping: SIGTERM")
    assert _fields(sock) == {"STOPPING": "1", "STATUS": "stopping: SIGTERM"}
    n.close()


def test_abstract_socket_names_start_with_at():
    name = f"ccrl-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent():
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog_interval is None


def test_a_vanished_manager_never_raises(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.status("still running") is False
    assert n.errors == 1


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert Notifier({"WATCHDOG_USEC": "20000000"}).watchdog_interval == 10.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 2.0
    # Meant for another process (e.g. inherited by a child): not ours to ping.
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval is None


# -- the agent itself, as systemd runs it ---------------------------------------------------


def _collect(sock: socket.socket, until, timeout: float = 60) -> list[dict[str, str]]:
    import time

    messages: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            messages.append(_fields(sock))
        except TimeoutError:
            break
        if until(messages):
            return messages
    raise AssertionError(f"timed out; received: {messages}")


def test_the_agent_speaks_sd_notify(ccrl_home, listener, tmp_path):
    """`ccrl agent run` with NOTIFY_SOCKET and WATCHDOG_USEC set, as under Type=notify."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path, sock = listener
    ccrl = Path(sys.executable).parent / "ccrl"
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
           "CCRL_AGENT__INGEST_INTERVAL_SECONDS": "0.5", "CCRL_AGENT__CYCLE_CHECK_INTERVAL_SECONDS": "1"}
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "agent.log", "w")  # noqa: SIM115
    agent = subprocess.Popen([str(ccrl), "agent", "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        got = _collect(sock, lambda m: sum("WATCHDOG" in x for x in m) >= 3
                       and any(x.get("STATUS", "").startswith("idle:") for x in m))
        ready = [m for m in got if m.get("READY") == "1"]
        assert len(ready) == 1 and ready[0]["MAINPID"] == str(agent.pid)
        assert any(m.get("STATUS") == "idle: 0/50 usable traces for the next cycle" for m in got)
        agent.send_signal(signal.SIGTERM)
        got = _collect(sock, lambda m: any(x.get("STOPPING") == "1" for x in m))
        stopping = next(m for m in got if m.get("STOPPING") == "1")
        assert stopping["STATUS"].startswith("stopping (SIGTERM)")
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
    assert "agent stopped" in (tmp_path / "agent.log").read_text()
