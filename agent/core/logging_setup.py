"""Logging for the agent and its child steps, with structlog.

Where the output goes depends on where the process runs:

- **journal**: under systemd (``JOURNAL_STREAM`` names our stderr, or ``INVOCATION_ID`` is set)
  each event goes to journald over its native protocol (``/run/systemd/journal/socket``): the
  syslog ``PRIORITY`` (so ``journalctl --user -u ccrl-agent -p warning`` works), a readable
  ``MESSAGE``, and every bound key as a field of its own (``CYCLE=3``, ``PHASE=sft``,
  ``RUN=12``: ``journalctl --user -u ccrl-agent CYCLE=3``). Large entries travel in a sealed
  memfd, as the protocol asks.
- **prefixed**: under systemd without the journal socket (or if a send fails), one line per
  event on stderr with a ``<N>`` priority prefix, which journald's stream reader understands.
- **console**: in a terminal, structlog's human-readable, coloured renderer.
- **plain**: anywhere else (pipes, files), the same renderer without colours.

Standard-library loggers (APScheduler, transformers in a child step) are routed through the
same pipeline, so nothing prints around it. ``silence_library_noise`` drops the few library log
lines that mean nothing to a ccrl user, each matched by its logger and exact wording.
"""

from __future__ import annotations

import array
import fcntl
import io
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

from ccrl.agent.core.secrets_display import scrub_password, scrub_urls
from ccrl.trainers.library_noise import silence_library_noise

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "ccrl"

# structlog method names → syslog priorities (sd-daemon(3), syslog(3)).
PRIORITIES: dict[str, int] = {
    "critical": 2,
    "fatal": 2,
    "error": 3,
    "exception": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
_LEVEL_NUMBERS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}
# Keys structlog adds that are not fields of the event itself.
_META_KEYS = {"event", "level", "timestamp", "logger", "exception", "exc_info", "stack"}
_FIELD_CHARS = re.compile(r"[^A-Z0-9_]")


def journal_field_name(key: str) -> str:
    """A journal field name for an event key: upper case letters, digits and ``_`` only, not
    starting with ``_`` (reserved for trusted fields) or a digit, at most 64 characters."""
    name = _FIELD_CHARS.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    return name[:64]


def _field_value(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, sort_keys=True).encode()
    return str(value).encode("utf-8", "replace")


def encode_journal_entry(fields: Mapping[str, Any]) -> bytes:
    """Serialize ``fields`` in the journal's native format: ``NAME=value\\n`` for values without
    a newline, else ``NAME\\n`` + little-endian 64-bit length + value + ``\\n``."""
    out = bytearray()
    for key, value in fields.items():
        name = journal_field_name(key).encode()
        data = _field_value(value)
        if b"\n" in data:
            out += name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """Sends entries to journald's native socket. Oversized entries go in a sealed memfd."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def available(self) -> bool:
        """Whether the socket exists (journald runs)."""
        return os.path.exists(self.path)

    def send(self, fields: Mapping[str, Any]) -> bool:
        """Send one entry; False when journald could not be reached."""
        payload = encode_journal_entry(fields)
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                try:
                    self._sock.sendto(payload, self.path)
                except OSError as exc:
                    if exc.errno not in (90, 105):  # EMSGSIZE, ENOBUFS: too big for a datagram
                        raise
                    self._send_memfd(payload)
                return True
            except OSError:
                return False

    def _send_memfd(self, payload: bytes) -> None:
        fd = os.memfd_create("ccrl-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, payload)
            fcntl.fcntl(
                fd,
                fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
            )
            assert self._sock is not None
            self._sock.sendmsg(
                [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.path
            )
        finally:
            os.close(fd)


def _message(event_dict: Mapping[str, Any]) -> str:
    """The human-readable line: the event, then its fields as ``key=value``."""
    parts = [str(event_dict.get("event", ""))]
    for key, value in event_dict.items():
        if key in _META_KEYS:
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)


class JournalLogger:
    """The structlog logger for journal mode: each call sends one journal entry, and falls back
    to a ``<N>``-prefixed stderr line if journald cannot be reached."""

    def __init__(self, sender: JournalSender, fallback: TextIO, identifier: str) -> None:
        self.sender = sender
        self.fallback = fallback
        self.identifier = identifier

    def _emit(self, method: str, event_dict: dict[str, Any]) -> None:
        priority = PRIORITIES.get(event_dict.get("level", method), 6)
        fields: dict[str, Any] = {
            "MESSAGE": _message(event_dict),
            "PRIORITY": priority,
            "SYSLOG_IDENTIFIER": self.identifier,
        }
        if event_dict.get("exception"):
            fields["EXCEPTION"] = event_dict["exception"]
        if event_dict.get("logger"):
            fields["LOGGER"] = event_dict["logger"]
        for key, value in event_dict.items():
            if key not in _META_KEYS:
                fields[journal_field_name(key)] = value
        if not self.sender.send(fields):
            _write_prefixed(self.fallback, priority, fields["MESSAGE"], event_dict.get("exception"))

    def __getattr__(self, method: str):  # noqa: ANN204 - structlog calls logger.<level>(**event_dict)
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda **event_dict: self._emit(method, event_dict)


class PrefixedLogger:
    """One ``<N>message`` line per event on a stream (journald reads the priority prefix)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _emit(self, method: str, event_dict: dict[str, Any]) -> None:
        priority = PRIORITIES.get(event_dict.get("level", method), 6)
        _write_prefixed(self.stream, priority, _message(event_dict), event_dict.get("exception"))

    def __getattr__(self, method: str):  # noqa: ANN204
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda **event_dict: self._emit(method, event_dict)


_write_lock = threading.Lock()


def _write_prefixed(stream: TextIO, priority: int, message: str, exception: str | None) -> None:
    lines = message.splitlines() or [""]
    if exception:
        lines += exception.rstrip().splitlines()
    with _write_lock:
        # Each line carries the prefix: journald's stream reader treats lines separately.
        stream.write("".join(f"<{priority}>{line}\n" for line in lines))
        stream.flush()


def _store_urls() -> list[str]:
    """The store URLs this process was given (environment, config file), whose passwords are
    scrubbed wherever they appear, even in a URL too malformed to be recognised as one."""
    urls = [os.environ.get("CCRL_DATABASE_URL") or ""]
    try:
        from ccrl.agent.core.config import get_settings

        urls.append(get_settings().database_url or "")
    except Exception:  # noqa: BLE001 - invalid settings: the environment's URL is still scrubbed
        pass
    return [url for url in dict.fromkeys(urls) if url]


def _scrub(text: str) -> str:
    for url in _store_urls():
        text = scrub_password(text, url)
    return scrub_urls(text)


def _scrub_credentials(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The store's password, URL passwords and ``password=``-style values out of every string in
    the event (an error naming the database URL, a formatted traceback): logs and journald keep
    no credentials."""
    return {key: _scrub(value) if isinstance(value, str) else value for key, value in event_dict.items()}


def _scrubbed_traceback(formatter: Any) -> Any:
    """``formatter`` (ConsoleRenderer's exception formatter) with its text scrubbed likewise."""

    def format_exception(sio: TextIO, exc_info: Any) -> None:
        buffer = io.StringIO()
        formatter(buffer, exc_info)
        sio.write(_scrub(buffer.getvalue()))

    return format_exception


def _pass_dict(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Final processor for our own loggers: hand the event dict over as keyword arguments."""
    return event_dict


def detect_mode(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> str:
    """``journal``, ``console`` or ``plain`` for this process (see the module docstring)."""
    env = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    journal_stream = env.get("JOURNAL_STREAM")
    if journal_stream:
        try:
            st = os.fstat(stream.fileno())
            if journal_stream == f"{st.st_dev}:{st.st_ino}":
                return "journal"
        except (OSError, ValueError, AttributeError):
            pass
    if env.get("INVOCATION_ID"):
        return "journal"
    try:
        if stream.isatty():
            return "console"
    except (ValueError, AttributeError):
        pass
    return "plain"


class _ToStructlog(logging.Handler):
    """Routes standard-library log records into the structlog pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = record.levelname.lower()
            if level not in _LEVEL_NUMBERS:
                level = "info"
            kwargs: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                kwargs["exc_info"] = record.exc_info
            getattr(structlog.get_logger(), level)(record.getMessage(), **kwargs)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def configure_logging(
    level: str = "info",
    mode: str | None = None,
    *,
    journal_socket: str = JOURNAL_SOCKET,
    identifier: str = SYSLOG_IDENTIFIER,
    stream: TextIO | None = None,
) -> str:
    """Configure structlog (and route stdlib logging into it) for this process.

    ``mode`` is detected when None. Returns the mode in effect: ``journal``, ``prefixed``,
    ``console`` or ``plain``.
    """
    stream = sys.stderr if stream is None else stream
    silence_library_noise()
    mode = mode or detect_mode(stream=stream)
    min_level = _LEVEL_NUMBERS.get(level.lower(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if mode == "journal":
        sender = JournalSender(journal_socket)
        if not sender.available():
            mode = "prefixed"
    if mode == "journal":
        processors = [*shared, structlog.processors.format_exc_info, _scrub_credentials, _pass_dict]
        factory: Any = lambda *_a: JournalLogger(sender, stream, identifier)  # noqa: E731
    elif mode == "prefixed":
        processors = [*shared, structlog.processors.format_exc_info, _scrub_credentials, _pass_dict]
        factory = lambda *_a: PrefixedLogger(stream)  # noqa: E731
    else:
        processors = [
            *shared,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            _scrub_credentials,
            structlog.dev.ConsoleRenderer(
                colors=mode == "console",
                # Plain tracebacks outside a terminal: rich's boxes with locals flood log files.
                exception_formatter=_scrubbed_traceback(
                    structlog.dev.default_exception_formatter if mode == "console" else structlog.dev.plain_traceback),
            ),
        ]
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(max(min_level, logging.INFO))  # third-party debug chatter stays out
    return mode
