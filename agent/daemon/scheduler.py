"""The always-on agent: APScheduler jobs for ingest, the cycle check and the systemd watchdog.

``ccrl agent run`` (the unit's ExecStart) builds an ``Agent`` and calls ``run()``:

- **ingest** every ``ingest_interval_seconds`` (captured events → traces), in this process;
- **cycle check** every ``cycle_check_interval_seconds``, and once right after start so a cycle
  interrupted by a crash or reboot resumes at once: start a cycle when the thresholds say so,
  advance the open one; its steps run in child processes (``child.py``);
- **watchdog** ping at half of ``WATCHDOG_USEC`` while the scheduler works.

Roles (``ccrl agent run --role``), for a team sharing one store (``CCRL_DATABASE_URL``):
``capture`` runs ingest only (a member's laptop: forwards its captured events, never trains),
``trainer`` runs the cycle check only (the GPU box: thresholds and training on the pooled
traces), ``all`` (the default) runs both, as a single machine does; on a shared store only the
agent holding the trainer lock (``trainer_lock.py``) runs cycles. With a store on a server,
ingest goes through ``forward.Forwarder``: while the server cannot be reached the events stay
in the local inbox and the agent retries with a growing pause, and an unreachable server at
start does not stop the agent.

Every job has ``max_instances=1`` and ``coalesce=True``: a cycle check that fires while a long
training step runs is dropped, not queued, and missed runs collapse into one.

Stopping (SIGTERM from systemd, or Ctrl-C): the signal handler only raises a flag (it must not
take locks); the main thread then stops scheduling, tells systemd ``STOPPING=1`` (asking for the
time the child needs), sets the stop event so a running step's child gets SIGTERM and
``child_stop_timeout_seconds`` to checkpoint, waits for the jobs, and exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from ccrl.agent.core.config import Settings
from ccrl.agent.core.lock import LockBusy, agent_lock
from ccrl.agent.daemon.cycle import CycleEngine
from ccrl.agent.daemon.sdnotify import Notifier

log = structlog.get_logger()

STATE_FILE = Path("agent") / "state.json"
ROLES = ("all", "capture", "trainer")


class _ExpectedSkips(logging.Filter):
    """A cycle check skipped because the previous one still runs (training) is by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def state_path(settings: Settings) -> Path:
    """The agent's small state file (last ingest, last error), read by ``ccrl agent status``."""
    return settings.home / STATE_FILE


def read_state(settings: Settings) -> dict[str, Any]:
    """The agent's last recorded state ({} when it never ran)."""
    try:
        return json.loads(state_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_ingest(settings: Settings) -> dict[str, Any]:
    """Ingest captured events once; returns the ingest report as a dict."""
    from ccrl.agent.capture.ingest import ingest

    return ingest(settings).as_dict()


class Agent:
    """The daemon: scheduler, jobs, signal handling and service notifications."""

    def __init__(self, settings: Settings, notifier: Notifier | None = None, role: str = "all") -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        from ccrl.agent.daemon.forward import Forwarder
        from ccrl.agent.store.remote import is_remote

        self.settings = settings
        self.role = role
        self.remote = is_remote(settings)
        self.forwarder = Forwarder(settings, ingest=run_ingest) if self.remote else None
        # On a shared store, only the agent holding this lock trains (trainer_lock.py).
        self.trainer_lock = None
        if self.remote and role in ("all", "trainer"):
            from ccrl.agent.training.trainer_lock import TrainerLock

            self.trainer_lock = TrainerLock(settings)
        self._trains: bool | None = None
        self.notifier = notifier or Notifier()
        self.stop = threading.Event()
        self.engine = CycleEngine(settings, stop=self.stop, notifier=self.notifier)
        self._signalled: int | None = None
        self._running_jobs = 0
        self._jobs_cond = threading.Condition()
        self._state: dict[str, Any] = {}
        self._state_lock = threading.Lock()
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(2), "watchdog": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    # -- state ---------------------------------------------------------------------------------

    def _record(self, **changes: Any) -> None:
        """Update the state file (atomically) that ``ccrl agent status`` reads."""
        with self._state_lock:
            self._state.update(changes, pid=os.getpid())
            path = state_path(self.settings)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(self._state, fh, default=str)
            os.replace(tmp, path)

    def _job(self, name: str, fn: Any) -> Any:
        """Wrap a job: count it as running (for shutdown), log and record its errors."""

        def wrapped() -> None:
            if self.stop.is_set():
                return
            with self._jobs_cond:
                self._running_jobs += 1
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a job's failure must never stop the agent
                log.exception("job failed", job=name)
                self._record(last_error=f"{name}: {type(exc).__name__}: {exc}", last_error_at=_now_iso())
            finally:
                with self._jobs_cond:
                    self._running_jobs -= 1
                    self._jobs_cond.notify_all()

        return wrapped

    # -- jobs ------------------------------------------------------------------------------------

    def ingest_once(self) -> None:
        """The ingest job."""
        if self.forwarder is not None:
            failures = self.forwarder.failures
            report = self.forwarder.run()
            if report is None:
                if self.forwarder.failures > failures:  # a new failure, not a skipped try
                    if failures == 0:
                        log.warning("store unreachable", error=self.forwarder.last_error)
                    self._record(last_error=f"ingest: {self.forwarder.last_error}", last_error_at=_now_iso())
                return
            if failures:
                log.info("store reachable again", after_failures=failures)
        else:
            report = run_ingest(self.settings)
        changed = report.get("traces_created") or report.get("traces_updated") or report.get("errors")
        if changed:
            log.info("ingested", traces_created=report.get("traces_created"),
                     traces_updated=report.get("traces_updated"), errors=len(report.get("errors") or []))
        updates: dict[str, Any] = {"last_ingest_at": _now_iso()}
        if report.get("errors"):
            updates.update(last_error=f"ingest: {report['errors'][0]}", last_error_at=_now_iso())
        self._record(**updates)

    def check_cycle(self) -> None:
        """The cycle-check job."""
        if self.trainer_lock is not None and not self._may_train():
            return
        self._record(last_cycle_check_at=_now_iso())
        cycle = self.engine.tick()
        if cycle is not None and cycle.error:
            self._record(last_error=f"cycle {cycle.number}: {cycle.error}", last_error_at=_now_iso())

    def _may_train(self) -> bool:
        """On a shared store: whether this agent is the one that trains (holds the lock)."""
        from ccrl.agent.store.remote import unreachable

        try:
            mine = self.trainer_lock.hold()
        except Exception as exc:
            if not unreachable(exc):
                raise
            self._record(last_error=f"cycle: store unreachable ({type(exc).__name__})", last_error_at=_now_iso())
            return False
        if mine != self._trains:
            if mine:
                log.info("this agent trains on the shared store")
            else:
                log.info("another agent trains on the shared store; this one only captures")
            self._trains = mine
        self._record(trainer="this agent" if mine else "another agent (this one only captures)")
        return mine

    def ping_watchdog(self) -> None:
        """The watchdog job: proves the scheduler still runs jobs."""
        self.notifier.watchdog()

    # -- life cycle ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only a flag: a handler that takes locks can deadlock the thread it interrupted.
        self._signalled = signum

    def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the exit status (0: clean stop)."""
        lock = agent_lock(self.settings.home)
        try:
            lock.acquire("ccrl agent run", agent=True)
        except LockBusy as busy:
            log.error("another agent is already running for this data directory",
                      pid=busy.holder.get("pid"), home=str(self.settings.home))
            return 1
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._serve()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            lock.release()

    def _serve(self) -> int:
        agent = self.settings.agent
        from ccrl.agent.store.db import get_engine

        try:
            get_engine(self.settings)  # open (and migrate) the store before any job runs
        except Exception as exc:  # noqa: BLE001 - say why and let systemd restart us later
            from ccrl.agent.store.remote import unreachable

            if not (self.remote and unreachable(exc)):
                log.error("cannot open the store", error=f"{type(exc).__name__}: {exc}", home=str(self.settings.home))
                return 1
            # A server that is down (or a laptop off the network): capture goes on into the
            # local inbox, and the jobs keep trying the store.
            log.warning("store unreachable at start; events stay in the local inbox until it is back",
                        error=f"{type(exc).__name__}: {exc}")
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        # Logger filters see only records logged on that very logger, not its children's.
        logging.getLogger("apscheduler.scheduler").addFilter(_ExpectedSkips())
        self._record(started_at=_now_iso(), stopped_at=None, home=str(self.settings.home), role=self.role)
        if self.role in ("all", "capture"):
            self.scheduler.add_job(self._job("ingest", self.ingest_once), "interval", id="ingest",
                                   seconds=agent.ingest_interval_seconds, next_run_time=datetime.now(timezone.utc))
        if self.role in ("all", "trainer"):
            self.scheduler.add_job(self._job("cycle", self.check_cycle), "interval", id="cycle",
                                   seconds=agent.cycle_check_interval_seconds,
                                   next_run_time=datetime.now(timezone.utc))
        interval = self.notifier.watchdog_interval
        if interval:
            self.scheduler.add_job(self._job("watchdog", self.ping_watchdog), "interval", id="watchdog",
                                   seconds=interval, executor="watchdog", next_run_time=datetime.now(timezone.utc))
        self.scheduler.start()
        log.info("agent started", pid=os.getpid(), home=str(self.settings.home), role=self.role,
                 ingest_every_s=agent.ingest_interval_seconds, cycle_check_every_s=agent.cycle_check_interval_seconds,
                 watchdog_every_s=interval)
        self.notifier.ready("started: checking thresholds")
        while self._signalled is None:
            time.sleep(0.2)
        return self._shutdown(self._signalled)

    def _shutdown(self, signum: int) -> int:
        name = signal.Signals(signum).name
        grace = self.settings.agent.child_stop_timeout_seconds
        log.info("stopping", signal=name)
        self.notifier.stopping(f"stopping ({name}): letting the current step checkpoint")
        self.notifier.extend_timeout(grace + 15)
        self.stop.set()
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + grace + 10
        with self._jobs_cond:
            while self._running_jobs and time.monotonic() < deadline:
                self._jobs_cond.wait(0.5)
            left = self._running_jobs
        if self.trainer_lock is not None and not left:
            self.trainer_lock.release()  # another agent may train from its next cycle check
        self._record(stopped_at=_now_iso())
        if left:
            log.error("jobs still running at exit", jobs=left)
            return 1
        log.info("agent stopped", signal=name)
        return 0


def run_once(settings: Settings, notifier: Notifier | None = None) -> Any:
    """``ccrl agent once``: ingest, then start (or resume) a cycle now and take it as far as it
    goes. A cycle waiting to retry is retried now. Returns the cycle, or None."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()  # Event.set from a handler: this thread only waits in the child loop, never in Event

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            report = run_ingest(settings)
            log.info("ingested", traces_created=report.get("traces_created"), traces_updated=report.get("traces_updated"))
        except Exception as exc:  # noqa: BLE001 - the traces already stored can still be trained on
            log.error("ingest failed; using the traces already stored", error=f"{type(exc).__name__}: {exc}")
        engine = CycleEngine(settings, stop=stop, notifier=notifier)
        return engine.tick(force=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
