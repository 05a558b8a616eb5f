"""Logging: journald's native protocol (priorities, fields, memfd for big entries) against a
datagram socket the test owns, the ``<N>`` stderr fallback, and mode detection."""

from __future__ import annotations

import array
import fcntl
import io
import logging
import os
import socket
import struct

import pytest
import structlog

from ccrl.agent.core.logging_setup import configure_logging, detect_mode, journal_field_name


def _parse_entry(data: bytes) -> dict[str, bytes]:
    """An independent reader of the native format (KEY=value lines; KEY\\n<u64 len>value\\n)."""
    fields: dict[str, bytes] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            fields[key.decode()] = value
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            fields[line.decode()] = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
    return fields


@pytest.fixture
def journal(tmp_path):
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    structlog.reset_defaults()
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)


def _receive(sock: socket.socket, via_memfd: bool = False) -> dict[str, bytes]:
    data, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    assert bool(ancdata) == via_memfd
    if ancdata:  # the memfd form: an empty datagram carrying one sealed file descriptor
        assert data == b""
        level, kind, raw = ancdata[0]
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fd = array.array("i", raw[:4])[0]
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    return _parse_entry(data)


def test_priorities_and_structured_fields(journal):
    path, sock = journal
    assert configure_logging("debug", mode="journal", journal_socket=path) == "journal"
    log = structlog.get_logger().bind(cycle=3, phase="sft", run=12)
    expected = [("debug", 7), ("info", 6), ("warning", 4), ("error", 3), ("critical", 2)]
    for method, priority in expected:
        getattr(log, method)("step progress", loss=1.25)
        entry = _receive(sock)
        assert entry["PRIORITY"] == str(priority).encode()
        assert entry["SYSLOG_IDENTIFIER"] == b"ccrl"
        assert entry["CYCLE"] == b"3" and entry["PHASE"] == b"sft" and entry["RUN"] == b"12"
        assert entry["LOSS"] == b"1.25"
        assert entry["MESSAGE"] == b"step progress cycle=3 phase=sft run=12 loss=1.25"


def test_multiline_values_use_the_length_prefixed_form(journal):
    path, sock = journal
    configure_logging("info", mode="journal", journal_socket=path)
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError:
        structlog.get_logger().exception("step failed", step="sft", detail={"a": [1, 2]})
    entry = _receive(sock)
    assert entry["PRIORITY"] == b"3"
    assert b"Traceback (most recent call last)" in entry["EXCEPTION"]
    assert entry["EXCEPTION"].rstrip().endswith(b"RuntimeError: CUDA out of memory")
    assert entry["DETAIL"] == b'{"a": [1, 2]}'
    assert entry["STEP"] == b"sft"


def test_entries_too_big_for_a_datagram_travel_in_a_sealed_memfd(journal):
    path, sock = journal
    configure_logging("info", mode="journal", journal_socket=path)
    big = "x" * (4 << 20)  # far above any AF_UNIX datagram limit
    structlog.get_logger().info("big entry", blob=big)
    entry = _receive(sock, via_memfd=True)
    assert entry["BLOB"] == big.encode()


def test_stdlib_loggers_reach_the_journal(journal):
    path, sock = journal
    configure_logging("info", mode="journal", journal_socket=path)
    logging.getLogger("apscheduler.scheduler").warning("job missed by %d s", 3)
    entry = _receive(sock)
    assert entry["PRIORITY"] == b"4"
    assert entry["MESSAGE"] == b"job missed by 3 s"
    assert entry["LOGGER"] == b"apscheduler.scheduler"


def test_without_journal_socket_lines_get_priority_prefixes(tmp_path):
    stream = io.StringIO()
    mode = configure_logging("info", mode="journal", journal_socket=str(tmp_path / "none"), stream=stream)
    assert mode == "prefixed"
    log = structlog.get_logger()
    log.warning("ollama unreachable", host="127.0.0.1:11434")
    log.debug("filtered out")
    log.info("two\nlines")
    assert stream.getvalue() == (
        "<4>ollama unreachable host=127.0.0.1:11434\n<6>two\n<6>lines\n"
    )
    structlog.reset_defaults()


def test_journal_field_names_are_valid():
    assert journal_field_name("cycle") == "CYCLE"
    assert journal_field_name("_private") == "PRIVATE"
    assert journal_field_name("3d") == "F_3D"
    assert journal_field_name("eval.loss-mean") == "EVAL_LOSS_MEAN"
    assert len(journal_field_name("k" * 100)) == 64


def test_mode_detection(tmp_path):
    log_file = open(tmp_path / "stderr.log", "w")  # noqa: SIM115
    st = os.fstat(log_file.fileno())
    assert detect_mode({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, log_file) == "journal"
    # JOURNAL_STREAM inherited but stderr redirected elsewhere: not the journal.
    assert detect_mode({"JOURNAL_STREAM": "1:2"}, log_file) == "plain"
    assert detect_mode({"INVOCATION_ID": "abc"}, log_file) == "journal"
    assert detect_mode({}, log_file) == "plain"
    log_file.close()
    primary, replica = os.openpty()
    with os.fdopen(replica, "w") as tty:
        assert detect_mode({}, tty) == "console"
    os.close(primary)
