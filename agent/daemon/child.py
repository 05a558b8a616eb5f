"""Run one cycle step (dataset, training, export, evaluation, deploy) in a child process.

Why a child: the daemon stays small, a step's GPU memory is freed when it exits, and a crash
or an out-of-memory kill in training marks the step failed with its error instead of killing
the agent. The child is ``python -m ccrl.agent.daemon.child --step S --cycle-id N …``; it writes its
outcome as JSON to a result file and exits with one of the ``EXIT_*`` codes below.

Stopping: the parent sends SIGTERM once (the agent is stopping); the child's handler sets a flag
that the step polls (``stop_requested()``, e.g. from a training callback that saves a checkpoint
and ends), and the step ends with ``StepStopped``. If the child is still there after the stop
timeout, the parent kills it; a step that resumes from its checkpoints loses at most the steps
since the last one. A child whose parent died (``kill -9`` of the agent) notices within a second
and stops itself the same way, so no orphan keeps training alongside a restarted agent.

Several GPUs (``[train] accelerate_config``): the SFT step, still this one child, starts
``accelerate launch`` for the training itself (``ccrl.trainers.launch``), so the store sees one
process per step as before. A stop reaches the ranks through the child; a kill takes the whole
process tree (torchrun puts each rank in a session of its own, out of reach of a group signal).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3
EXIT_STOPPED = 4

PROGRESS_ENV = "CCRL_STEP_PROGRESS"


class StepUnavailable(RuntimeError):
    """The module implementing a step is not part of this installation (yet)."""


class StepStopped(RuntimeError):
    """The step ended early because a stop was requested (it can resume later)."""


# ---------------------------------------------------------------------------------------------
# Inside the child


_stop = threading.Event()
_last_progress_log = 0.0


def stop_requested() -> bool:
    """True once the agent asked this step to stop: checkpoint and raise ``StepStopped``."""
    return _stop.is_set()


def report_progress(fraction: float | None, message: str = "", **fields: Any) -> None:
    """Tell the agent how far the step is (shown as the unit's STATUS, e.g. "cycle 3: SFT 40%").

    A no-op outside a child step. Also logs a progress line at most every 30 s, so the journal
    gets periodic lines rather than progress-bar noise.
    """
    global _last_progress_log
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    record = {"fraction": fraction, "message": message, "time": time.time(), **fields}
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(record, fh, default=str)
        os.replace(tmp, path)
    except OSError:
        return
    now = time.monotonic()
    if now - _last_progress_log >= 30:
        _last_progress_log = now
        import structlog

        pct = f"{fraction:.0%}" if fraction is not None else ""
        structlog.get_logger().info("progress", percent=pct, detail=message, **fields)


def _on_sigterm(signum: int, _frame: Any) -> None:
    if _stop.is_set():
        # Asked twice: stop now, whatever the step is doing.
        raise StepStopped(f"stopped by signal {signum} (second request)")
    _stop.set()


def _watch_parent(parent: int) -> None:
    """Stop ourselves when the agent that started us is gone (we would be an orphan)."""
    while True:
        time.sleep(1)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _write_result(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, default=str))
    os.replace(tmp, path)


def child_main(argv: list[str] | None = None) -> int:
    """Entry point of the child process."""
    parser = argparse.ArgumentParser(prog="python -m ccrl.agent.daemon.child")
    parser.add_argument("--step", required=True)
    parser.add_argument("--cycle-id", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal reaches the agent, which stops us
    threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()

    from ccrl.agent.core.config import get_settings
    from ccrl.agent.core.logging_setup import configure_logging

    settings = get_settings()
    configure_logging(settings.agent.log_level, identifier="ccrl-agent")
    import structlog

    from ccrl.agent.daemon import steps

    log = structlog.get_logger().bind(step=args.step, cycle_id=args.cycle_id)
    started = time.time()
    try:
        result = steps.run_step(args.step, args.cycle_id, settings)
    except StepUnavailable as exc:
        _write_result(args.result, {"ok": False, "unavailable": str(exc)})
        return EXIT_UNAVAILABLE
    except StepStopped as exc:
        log.warning("step stopped on request", reason=str(exc))
        _write_result(args.result, {"ok": False, "stopped": str(exc)})
        return EXIT_STOPPED
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a recorded error
        if _stop.is_set() and isinstance(exc, (KeyboardInterrupt, SystemExit)):
            _write_result(args.result, {"ok": False, "stopped": repr(exc)})
            return EXIT_STOPPED
        error = f"{type(exc).__name__}: {exc}"
        if "out of memory" in str(exc).lower():
            error += " (out of memory: lower train.batch_size or use a smaller model)"
        # ccrl's own errors explain themselves; a traceback is for the unexpected ones.
        expected = type(exc).__module__.startswith("ccrl.")
        log.error("step failed", error=error, exc_info=not expected)
        _write_result(args.result, {"ok": False, "error": error, "traceback": traceback.format_exc()[-8000:]})
        return EXIT_FAILED
    _write_result(args.result, {"ok": True, "result": result, "seconds": round(time.time() - started, 3)})
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# In the agent


@dataclass
class StepOutcome:
    """How a child step ended: ``done``, ``failed``, ``unavailable`` or ``interrupted``."""

    status: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    returncode: int | None = None
    seconds: float | None = None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def read_result(path: Path, returncode: int | None, stop_sent: bool) -> StepOutcome:
    """Turn a finished child's exit status and result file into a ``StepOutcome``."""
    record: dict[str, Any] = {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("ok") and returncode in (EXIT_OK, None):
        return StepOutcome("done", record.get("result") or {}, returncode=returncode, seconds=record.get("seconds"))
    if "unavailable" in record:
        return StepOutcome("unavailable", error=record["unavailable"], returncode=returncode)
    if "stopped" in record or (stop_sent and returncode in (EXIT_STOPPED, -signal.SIGTERM, -signal.SIGKILL)):
        return StepOutcome("interrupted", error=record.get("stopped") or "stopped", returncode=returncode)
    if record.get("error"):
        return StepOutcome("failed", error=record["error"], returncode=returncode)
    if returncode is not None and returncode < 0:
        name = _signal_name(-returncode)
        hint = " (often the kernel's out-of-memory killer: see `journalctl -k`)" if -returncode == signal.SIGKILL else ""
        return StepOutcome("failed", error=f"the step's process was killed by {name}{hint}", returncode=returncode)
    return StepOutcome("failed", error=f"the step's process exited with status {returncode} without a result",
                       returncode=returncode)


def pid_is_step_child(pid: int) -> bool:
    """Whether ``pid`` is a live ``ccrl.agent.daemon.child`` process (an orphan from before a crash;
    ``ccrl.agent.child`` is its name before the agent's packages, for an orphan of an older version)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ccrl.agent.daemon.child" in cmdline or b"ccrl.agent.child\x00" in cmdline


def reap_orphan(pid: int, timeout: float) -> None:
    """Stop a step child left behind by an agent that died, and wait until it is gone.

    It has probably already noticed (it watches its parent) and is checkpointing; it gets up to
    ``timeout`` seconds to finish, then SIGKILL.
    """
    if not pid_is_step_child(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_is_step_child(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_is_step_child(pid):
        from ccrl.trainers.launch import kill_tree

        kill_tree(pid)  # with a launcher and its ranks below it, if any
        while pid_is_step_child(pid):
            time.sleep(0.05)


def step_dir(home: Path) -> Path:
    """Where step children write their result and progress files."""
    return Path(home) / "agent" / "steps"


def result_path(home: Path, cycle_id: int, step: str) -> Path:
    """Where the child for (cycle, step) writes its result."""
    return step_dir(home) / f"cycle-{cycle_id}-{step}.json"


def progress_path(home: Path, cycle_id: int, step: str) -> Path:
    """Where the child for (cycle, step) reports its progress."""
    return step_dir(home) / f"cycle-{cycle_id}-{step}.progress.json"


class ChildRunner:
    """Runs steps as child processes for the cycle engine.

    ``stop`` is the agent's stop event: when it is set during a step, the child gets SIGTERM
    and ``stop_timeout`` seconds to checkpoint and exit before SIGKILL.
    """

    def __init__(self, home: Path, stop: threading.Event, stop_timeout: float,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.home = Path(home)
        self.stop = stop
        self.stop_timeout = stop_timeout
        self.on_progress = on_progress
        self.workdir = step_dir(self.home)

    def leftover(self, cycle_id: int, step: str) -> StepOutcome | None:
        """The outcome a child wrote before the agent died without recording it, if any."""
        path = result_path(self.home, cycle_id, step)
        if not path.exists():
            return None
        outcome = read_result(path, None, stop_sent=False)
        return outcome if outcome.status == "done" else None

    def run(self, step: str, cycle_id: int, *, lock_fd: int | None = None,
            on_start: Callable[[int], None] | None = None) -> StepOutcome:
        """Run ``step`` for cycle ``cycle_id`` in a child and wait for it."""
        from ccrl.agent.core.lock import INHERITED_FD_ENV
        from ccrl.agent.store.db import ensure_private_dir

        ensure_private_dir(self.workdir)
        result = result_path(self.home, cycle_id, step)
        progress = progress_path(self.home, cycle_id, step)
        for stale in (result, progress):
            stale.unlink(missing_ok=True)
        env = dict(os.environ)
        env[PROGRESS_ENV] = str(progress)
        env["PYTHONUNBUFFERED"] = "1"
        if not sys.stderr.isatty():
            # Progress bars are noise in the journal; the step logs periodic lines instead.
            env.setdefault("TQDM_DISABLE", "1")
            env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        pass_fds: tuple[int, ...] = ()
        if lock_fd is not None:
            env[INHERITED_FD_ENV] = str(lock_fd)
            pass_fds = (lock_fd,)
        cmd = [sys.executable, "-m", "ccrl.agent.daemon.child", "--step", step, "--cycle-id", str(cycle_id),
               "--result", str(result), "--parent-pid", str(os.getpid())]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, pass_fds=pass_fds, stdin=subprocess.DEVNULL)
        if on_start is not None:
            on_start(proc.pid)
        stop_sent_at: float | None = None
        last_progress: float | None = None
        while True:
            try:
                returncode = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stop.is_set() and stop_sent_at is None:
                proc.send_signal(signal.SIGTERM)
                stop_sent_at = time.monotonic()
            elif stop_sent_at is not None and time.monotonic() - stop_sent_at > self.stop_timeout:
                from ccrl.trainers.launch import kill_tree

                kill_tree(proc.pid)  # the child, and an accelerate launcher with its ranks
            if self.on_progress is not None:
                try:
                    mtime = progress.stat().st_mtime
                except OSError:
                    mtime = None
                if mtime is not None and mtime != last_progress:
                    last_progress = mtime
                    try:
                        self.on_progress(json.loads(progress.read_text()))
                    except (OSError, ValueError):
                        pass
        outcome = read_result(result, returncode, stop_sent=stop_sent_at is not None)
        if outcome.seconds is None:
            outcome.seconds = round(time.monotonic() - started, 3)
        return outcome


if __name__ == "__main__":
    # Run in the imported module, not in __main__: the stop flag and the exception classes that
    # steps use (ccrl.agent.daemon.child.stop_requested, StepStopped…) must be the same objects.
    from ccrl.agent.daemon.child import child_main as _child_main

    sys.exit(_child_main())
