"""The systemd notification protocol (``sd_notify``), in a few lines of stdlib.

A ``Type=notify`` service tells systemd it is ready (``READY=1``), what it is doing
(``STATUS=cycle 3: SFT 40%``), that it is alive (``WATCHDOG=1``, at least every
``WATCHDOG_USEC``) and that it is stopping (``STOPPING=1``). Each message is one datagram of
``KEY=value`` lines sent to the ``AF_UNIX`` socket named in ``NOTIFY_SOCKET``; a name starting
with ``@`` is an abstract socket (leading NUL byte). Outside systemd ``NOTIFY_SOCKET`` is unset
and every call is a silent no-op, so the agent runs the same in a terminal.

Reference: sd_notify(3) and sd_watchdog_enabled(3).
"""

from __future__ import annotations

import os
import socket
import threading


def _address(name: str) -> str | bytes:
    """The socket address for a ``NOTIFY_SOCKET`` value (``@name`` → abstract namespace)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


class Notifier:
    """Sends notifications to the service manager named by ``NOTIFY_SOCKET``.

    The environment is read once, at construction. Sending never raises: a service must keep
    working when the manager is gone (e.g. during a manager re-exec), so errors are counted in
    ``errors`` and otherwise ignored.
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_name: str | None = env.get("NOTIFY_SOCKET") or None
        self.errors = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (``NOTIFY_SOCKET`` set)."""
        return self.socket_name is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"KEY=value"`` strings) as one message; True when it was sent."""
        if not self.socket_name:
            return False
        payload = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, _address(self.socket_name))
                return True
            except OSError:
                self.errors += 1
                return False

    def ready(self, status: str | None = None) -> bool:
        """Tell the manager start-up is finished (``READY=1``), optionally with a status line."""
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl --user status`` shows."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Keep-alive ping (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Tell the manager the service is shutting down (``STOPPING=1``)."""
        fields = ["STOPPING=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (``EXTEND_TIMEOUT_USEC``), e.g. while a child checkpoints."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of ``WATCHDOG_USEC`` as sd_watchdog_enabled(3) advises,
        or None when the manager expects no pings (or expects them from another process)."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket (a later message reopens it)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _watchdog_usec(env: dict[str, str] | os._Environ[str]) -> int | None:
    """``WATCHDOG_USEC`` when it is meant for this process (``WATCHDOG_PID`` unset or ours)."""
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec if usec > 0 else None


def _one_line(text: str) -> str:
    """Status values end at the first newline in the protocol: keep them on one line."""
    return " ".join(text.split())
