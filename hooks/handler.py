"""The hook's work for one event: read stdin, honour opt-out, redact, store or spool.

Standard library only; ``capture.py`` is the thin script Claude Code runs (see its
docstring), and this module holds the code so that it is loaded from cached bytecode.
"""

import os
import time

if __package__:
    from . import budget, inbox, paths
    from .paths import ignored_path
    from .redact import redact_bytes
else:  # imported by hooks/capture.py run by path: siblings are top-level modules
    import budget
    import inbox
    import paths
    from paths import ignored_path
    from redact import redact_bytes

# Claude Code writes the whole payload and closes the pipe at once. A writer that goes quiet
# (or never closes) must not hang the session: keep what arrived and move on (the drain then
# quarantines the truncated payload). Worst case, with the inbox's 2 s busy timeout and the
# spool after it, the hook still ends well inside the 10 s timeout ``ccrl hooks install``
# gives it, past which Claude Code would kill it and the event would be lost.
STDIN_IDLE_TIMEOUT_S = 3.0
STDIN_TOTAL_TIMEOUT_S = 6.0
# Stored instead of a payload whose redaction failed: no secret reaches disk, and the drain
# quarantines the event with this reason instead of losing all trace of it.
REDACTION_FAILED = b"\x00ccrl: redaction failed"


def read_stdin(idle: float = STDIN_IDLE_TIMEOUT_S, total: float = STDIN_TOTAL_TIMEOUT_S,
               keep: int = budget.EVENT_BUDGET_BYTES) -> tuple[bytes, int]:
    """``(head, size)``: the first ``keep`` bytes of stdin and how many bytes it held in all,
    waiting at most ``idle`` s per chunk and ``total`` s in all. Bytes past ``keep`` are read
    and counted but not kept, so memory stays bounded whatever the writer sends (and the writer
    never meets a closed pipe). A terminal or a closed stdin reads as empty."""
    try:
        if os.isatty(0):
            return b"", 0
        import select

        poller = select.poll()
        poller.register(0, select.POLLIN)
    except (OSError, ValueError):
        return b"", 0
    chunks = []
    kept = size = 0
    deadline = time.monotonic() + total
    try:
        while True:
            wait = min(idle, deadline - time.monotonic())
            if wait <= 0 or not poller.poll(int(wait * 1000)):
                break
            try:
                chunk = os.read(0, 1 << 20)
            except BlockingIOError:  # a non-blocking stdin (Node hands out sockets) woke early
                continue
            if not chunk:
                break
            size += len(chunk)
            if kept < keep:
                chunk = chunk[:keep - kept]
                chunks.append(chunk)
                kept += len(chunk)
    except OSError:
        pass
    return b"".join(chunks), size


def _cwds(data: bytes) -> list[str]:
    """Every ``"cwd": "..."`` value in the payload, found without importing json.

    A ``"cwd"`` key can only occur as a key at some depth (inside a JSON string its quotes are
    escaped), so honouring every occurrence errs on the side of the opt-out. A value with
    escapes goes through the json module (rare).
    """
    found = []
    at = data.find(b'"cwd"')
    while at >= 0:
        rest = data[at + 5:at + 5 + 8192].lstrip()
        if rest[:1] == b":":
            rest = rest[1:].lstrip()
            end = rest.find(b'"', 1)
            if rest[:1] == b'"' and end > 0:
                raw = rest[1:end]
                if b"\\" in raw:
                    import json

                    try:
                        found.append(json.JSONDecoder().raw_decode(rest.decode("utf-8", "replace"))[0])
                    except ValueError:
                        pass
                else:
                    found.append(raw.decode("utf-8", "replace"))
        at = data.find(b'"cwd"', at + 5)
    return [cwd for cwd in found if isinstance(cwd, str) and cwd]


def opted_out(data: bytes) -> bool:
    """True when capture is disabled: ``CCRL_DISABLE`` set, or a ``.ccrl-ignore`` file in the
    session's directory (the payload's ``cwd``, else the hook's working directory) or above."""
    if os.environ.get("CCRL_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    cwds = _cwds(data)
    if not cwds:
        try:
            cwds = [os.getcwd()]
        except OSError:
            return False
    return any(ignored_path(cwd) for cwd in cwds)


def capture(payload: bytes, home: str | None = None, keep_open: bool = False,
            size: int | None = None) -> str:
    """Store one event. Returns where it went: 'inbox', 'spool', 'ignored' or 'lost'.

    ``payload`` is the event's stdin, or its head when ``size`` (the whole event's bytes) is
    larger: past the size budget it is stored cut, with a marker saying so (``budget.fit``),
    before redaction runs, so neither costs more than the budget allows.
    """
    size = len(payload) if size is None else size
    if size > budget.EVENT_BUDGET_BYTES or len(payload) > budget.EVENT_BUDGET_BYTES:
        payload = budget.fit(payload, max(size, len(payload)))
    if opted_out(payload):
        return "ignored"
    # Whole microseconds: a spool file's name holds them exactly (see inbox.spool_name).
    received_at = time.time_ns() // 1000 / 1_000_000
    home = home or paths.data_home()
    try:
        payload = redact_bytes(payload)
    except Exception as exc:  # MemoryError or a bug: never write the unredacted payload
        payload = REDACTION_FAILED + f" ({type(exc).__name__}); {size} bytes not kept".encode()
    try:
        inbox.store(home, received_at, payload, keep_open=keep_open)
        return "inbox"
    except Exception:
        return "spool" if inbox.spool(home, received_at, payload) else "lost"


def main() -> None:
    """Entry point: capture stdin, print nothing, exit 0 whatever happens."""
    try:
        # Nothing this process prints (not even an interpreter warning) may reach Claude Code.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    except Exception:
        pass
    try:
        head, size = read_stdin()
        capture(head, keep_open=True, size=size)
    except BaseException:
        pass
    # Leave without interpreter teardown: nothing needs flushing, and the inbox connection
    # stays unclosed on purpose (see inbox.append).
    os._exit(0)

