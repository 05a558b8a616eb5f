"""The sd_notify protocol: messages as systemd receives them, on a datagram socket of our own."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from ccrl.agent.sdnotify import Notifier


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
