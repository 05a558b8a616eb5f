"""The agent's training cycle: a state machine persisted in the ``cycles`` table.

A cycle is: dataset built → SFT → RL (every ``ppo_frequency``-th cycle) → exported → evaluated
→ deployed, or left a candidate (auto-deploy off), or rejected (the evaluation gate said no).

- **When**: the first cycle starts once ``min_traces_for_sft`` usable traces exist; each later
  one once ``traces_per_training_cycle`` new usable traces arrived since the last cycle's
  dataset. A cycle marks the traces its dataset covers with its number
  (``Trace.covered_by_cycle``, when it starts and again when its dataset step starts); "new"
  means not marked. Not an id watermark: on a store several agents write at once, a trace can
  commit after one with a higher id (an UPDATE marks only what has committed, so a late one
  stays unmarked and counts next time), SQLite reuses the ids of purged newest rows, and a turn
  still open when a cycle starts is left unmarked and counts once it completes. A backlog (say
  500 imported traces) starts one cycle on all of it, and no trace counts towards two cycles.
- **Plan**: fixed when the cycle starts (which steps run, which are skipped and why), so a
  config change or a restart mid-cycle never changes what this cycle does.
- **Resume**: every transition is committed before and after a step runs. After a crash,
  ``kill -9`` or reboot, the next check finds the open cycle and continues at the first step
  not done; done steps are never redone. A step found "running" means the agent died during
  it: a result the child already wrote is recorded as is; otherwise an orphaned child is
  stopped and the step runs again, resuming from its own checkpoints (training does).
- **Failures**: a failed step is retried after ``retry_backoff_seconds`` (doubling, capped at
  ``retry_backoff_max_seconds``), at most ``max_step_attempts`` times; then the cycle fails and
  the agent waits for new data (the next cycle needs ``traces_per_training_cycle`` traces
  beyond it, or ``ccrl agent once``).
- **Missing modules**: a step whose module is not installed is recorded as unavailable, never
  faked. The dataset, SFT and (when planned) export steps block the cycle until they are
  available; RL, evaluation and deployment are passed over, and the outcome says what was not
  done (a model that was not evaluated is never auto-deployed).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from ccrl.agent.core.config import AgentSettings, Settings
from ccrl.agent.core.lock import FileLock, LockBusy, pipeline_lock
from ccrl.agent.daemon.child import ChildRunner, StepOutcome, reap_orphan
from ccrl.agent.daemon.sdnotify import Notifier
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import Cycle, Trace, utcnow

log = structlog.get_logger()

STEP_ORDER = ("dataset", "sft", "rl", "export", "evaluate", "deploy")
# Without these the cycle cannot produce anything: it waits until they are installed.
BLOCKING_STEPS = frozenset({"dataset", "sft", "export"})
OPEN_STATUSES = ("running", "waiting", "blocked")
FINISHED_STATUSES = ("completed", "failed")
STEP_LABELS = {"dataset": "dataset", "sft": "SFT", "rl": "RL", "export": "export",
               "evaluate": "evaluation", "deploy": "deploy"}


def _ordinal(n: int) -> str:
    return {1: "", 2: "2nd ", 3: "3rd "}.get(n, f"{n}th ")


def plan_steps(number: int, agent: AgentSettings) -> dict[str, dict[str, Any]]:
    """Which steps cycle ``number`` runs and why the others are skipped (fixed at its start)."""

    def pending() -> dict[str, Any]:
        return {"status": "pending", "attempts": 0}

    def skipped(reason: str) -> dict[str, Any]:
        return {"status": "skipped", "attempts": 0, "reason": reason}

    def every(freq: int, key: str, label: str) -> dict[str, Any]:
        if freq <= 0:
            return skipped(f"{label} is off ({key} = 0)")
        if number % freq:
            return skipped(f"{label} runs every {_ordinal(freq)}cycle ({key} = {freq}); this is cycle {number}")
        return pending()

    steps: dict[str, dict[str, Any]] = {"dataset": pending()}
    steps["sft"] = every(agent.sft_frequency, "sft_frequency", "SFT")
    steps["rl"] = every(agent.ppo_frequency, "ppo_frequency", "RL")
    steps["export"] = pending() if agent.auto_export_gguf else skipped("auto_export_gguf is off")
    steps["evaluate"] = pending()
    steps["deploy"] = (
        pending() if agent.auto_deploy_ollama
        else skipped("auto_deploy_ollama is off: the new version stays a candidate for `ccrl deploy`")
    )
    return steps


# ---------------------------------------------------------------------------------------------
# Thresholds


def _usable_filter() -> Any:
    """The dataset builder's per-trace filter."""
    from ccrl.agent.datasets.dataset_filters import trace_filter
    from ccrl.trainers.signals import SIGNALS_VERSION, extract_signals

    def usable(trace: dict[str, Any], cfg: Any) -> bool:
        stored = trace.get("signals") or {}
        signals = stored if stored.get("version") == SIGNALS_VERSION else extract_signals(trace)
        return trace_filter(trace, signals, cfg) is None

    return usable


def _candidates(settings: Settings | None) -> list[Any]:
    """SQL conditions every trace the per-trace filters keep meets (so the store, not Python,
    skips open and subagent traces); the filters themselves still decide."""
    from ccrl.agent.core.config import get_settings

    cfg = (settings or get_settings()).dataset
    where: list[Any] = []
    if cfg.drop_incomplete:
        where.append(Trace.status == "complete")
    if not cfg.include_subagents:
        where.append(col(Trace.parent_id).is_(None))
        where.append(or_(col(Trace.agent_id).is_(None), Trace.agent_id == ""))
    return where


def count_usable(session: Session, settings: Settings | None = None, *, uncovered: bool = False,
                 enough: int | None = None) -> tuple[int, str]:
    """Traces that the dataset builder's per-trace filters keep (multi-step, enough reasoning,
    complete, …), only those no cycle covered yet with ``uncovered``, and a phrase saying what
    was counted. With ``enough`` the count stops there: a threshold only needs to know that it
    is reached, and a store of 100,000 traces must not be read whole to say so.

    The duplicate-prompt and length filters need the whole set or the rendered conversation and
    are left to the build.
    """
    where = [col(Trace.covered_by_cycle).is_(None)] if uncovered else []
    usable = _usable_filter()
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.store.models import ToolCall
    from ccrl.agent.store.records import trace_json

    cfg = (settings or get_settings()).dataset
    where += _candidates(settings)
    count, last = 0, 0
    while enough is None or count < enough:
        page = list(session.exec(select(Trace).where(col(Trace.id) > last, *where).order_by(col(Trace.id)).limit(500)))
        if not page:
            break
        ids = [t.id for t in page]
        calls: dict[int, list[ToolCall]] = {i: [] for i in ids}  # type: ignore[misc]
        for call in session.exec(select(ToolCall).where(col(ToolCall.trace_id).in_(ids))):
            calls[call.trace_id].append(call)
        for trace in page:
            count += usable(trace_json(trace, calls[trace.id]), cfg)  # type: ignore[index]
            if enough is not None and count >= enough:
                break
        last = ids[-1]  # type: ignore[assignment]
    return count, "usable traces (after the dataset filters)"


def mark_covered(session: Session, number: int) -> int:
    """Mark every trace stored (committed) by now and no longer open as covered by cycle
    ``number``, unless an earlier cycle covered it; returns the highest trace id (the cycle's
    ``trace_watermark``, for reports). Open turns stay unmarked: they count once complete."""
    session.exec(update(Trace).where(col(Trace.covered_by_cycle).is_(None), Trace.status != "open")  # type: ignore[call-overload]
                 .values(covered_by_cycle=number).execution_options(synchronize_session=False))
    return max_trace_id(session)


@dataclass
class Threshold:
    """How far the data is from the next cycle."""

    due: bool
    new: int
    required: int
    since_watermark: int
    basis: str
    first: bool
    at_least: bool = False  # the count stopped at ``required``: there may be more

    @property
    def remaining(self) -> int:
        """Traces still needed before the next cycle starts."""
        return max(0, self.required - self.new)

    def as_dict(self) -> dict[str, Any]:
        return {"due": self.due, "new": self.new, "required": self.required, "remaining": self.remaining,
                "since_trace_id": self.since_watermark, "basis": self.basis, "first_cycle": self.first,
                "new_at_least": self.at_least}


def last_finished(session: Session) -> Cycle | None:
    """The latest cycle that completed or failed."""
    return session.exec(
        select(Cycle).where(Cycle.status.in_(FINISHED_STATUSES)).order_by(Cycle.number.desc())  # type: ignore[attr-defined]
    ).first()


def open_cycle(session: Session) -> Cycle | None:
    """The cycle in progress (running, waiting to retry, or blocked), if any."""
    return session.exec(
        select(Cycle).where(Cycle.status.in_(OPEN_STATUSES)).order_by(Cycle.number)  # type: ignore[attr-defined]
    ).first()


def threshold(session: Session, agent: AgentSettings, settings: Settings | None = None) -> Threshold:
    """Whether a new cycle is due: usable traces no cycle covered yet, against
    ``min_traces_for_sft`` (no cycle yet) or ``traces_per_training_cycle``, counted up to that
    number only (``at_least`` then). While a cycle is open this says how far the one after it
    is (a new cycle starts only when none is open)."""
    last = session.exec(select(Cycle).order_by(Cycle.number.desc())).first()  # type: ignore[attr-defined]
    base = (last.trace_watermark or 0) if last else 0
    required = agent.traces_per_training_cycle if last else agent.min_traces_for_sft
    new, basis = count_usable(session, settings, uncovered=True, enough=max(1, required))
    return Threshold(due=new >= required, new=new, required=required, since_watermark=base, basis=basis,
                     first=last is None, at_least=new >= max(1, required))


def max_trace_id(session: Session) -> int:
    """The highest trace id stored (0 when none)."""
    return int(session.exec(select(func.max(Trace.id))).one() or 0)


# ---------------------------------------------------------------------------------------------
# Transitions (pure: they change a Cycle object; the engine commits)


def next_step(cycle: Cycle) -> str | None:
    """The step to run next: the first one not finished for good (None once the cycle ended)."""
    if cycle.status in FINISHED_STATUSES:
        return None
    for step in STEP_ORDER:
        entry = cycle.steps.get(step, {})
        status = entry.get("status", "pending")
        if status in ("pending", "running"):
            return step
        if status == "failed" and cycle.status == "waiting":
            return step
        if status == "unavailable" and step in BLOCKING_STEPS:
            return step
    return None


def _set_step(cycle: Cycle, step: str, **changes: Any) -> dict[str, Any]:
    steps = {k: dict(v) for k, v in cycle.steps.items()}
    steps.setdefault(step, {"status": "pending", "attempts": 0}).update(changes)
    cycle.steps = steps  # a new dict: the JSON column is saved only when reassigned
    return steps[step]


def precondition(cycle: Cycle, step: str) -> str | None:
    """Why ``step`` cannot run in this cycle now that earlier steps ended as they did, or None."""
    steps = cycle.steps
    if step == "export" and not (cycle.sft_run_id or cycle.rl_run_id):
        return "nothing was trained in this cycle"
    if step == "evaluate" and not (cycle.model_version_id or cycle.sft_run_id or cycle.rl_run_id):
        return "there is no model to evaluate in this cycle"
    if step == "deploy":
        if not cycle.model_version_id:
            return "there is no exported model version to deploy"
        evaluation = steps.get("evaluate", {})
        if evaluation.get("status") != "done":
            return (f"the model was not evaluated ({evaluation.get('reason') or evaluation.get('status')}); "
                    "only a model that passed the evaluation gate is deployed automatically")
        if not evaluation.get("result", {}).get("passed"):
            return "the evaluation gate rejected the model"
    return None


def backoff_seconds(attempts: int, agent: AgentSettings) -> float:
    """Wait before retry number ``attempts`` (1-based): doubling from the base, capped."""
    return min(agent.retry_backoff_seconds * (2 ** max(0, attempts - 1)), agent.retry_backoff_max_seconds)


def apply_outcome(cycle: Cycle, step: str, outcome: StepOutcome, agent: AgentSettings,
                  now: datetime | None = None) -> None:
    """Record how ``step`` ended on ``cycle`` and decide the cycle's next state."""
    now = now or utcnow()
    entry = cycle.steps.get(step, {})
    if outcome.status == "done":
        _set_step(cycle, step, status="done", result=outcome.result, finished_at=now.isoformat(),
                  seconds=outcome.seconds, error=None)
        result = outcome.result
        if step == "dataset":
            cycle.dataset_version_id = result.get("dataset_version_id")
            if result.get("trace_watermark") is not None:
                cycle.trace_watermark = int(result["trace_watermark"])
        elif step == "sft":
            cycle.sft_run_id = result.get("run_id")
        elif step == "rl":
            cycle.rl_run_id = result.get("run_id")
        elif step == "export":
            cycle.model_version_id = result.get("model_version_id")
        cycle.status, cycle.error, cycle.next_attempt_at = "running", None, None
    elif outcome.status == "interrupted":
        _set_step(cycle, step, status="pending", note=f"interrupted at {now.isoformat(timespec='seconds')}; resumes")
        cycle.status = "running"
    elif outcome.status == "unavailable":
        _set_step(cycle, step, status="unavailable", reason=outcome.error, finished_at=now.isoformat())
        if step in BLOCKING_STEPS:
            cycle.status, cycle.error = "blocked", outcome.error
        else:
            cycle.status = "running"
    else:
        attempts = int(entry.get("attempts", 0)) + 1
        _set_step(cycle, step, status="failed", attempts=attempts, error=outcome.error, finished_at=now.isoformat())
        cycle.error = f"{step} failed (attempt {attempts}/{agent.max_step_attempts}): {outcome.error}"
        if attempts < agent.max_step_attempts:
            cycle.status = "waiting"
            cycle.next_attempt_at = now + timedelta(seconds=backoff_seconds(attempts, agent))
        else:
            cycle.status, cycle.outcome, cycle.finished_at = "failed", "failed", now
            cycle.next_attempt_at = None
    cycle.child_pid = None
    cycle.updated_at = now


def finish(cycle: Cycle, now: datetime | None = None) -> None:
    """Close a cycle whose steps are all finished, with its outcome."""
    now = now or utcnow()
    steps = cycle.steps
    if steps.get("deploy", {}).get("status") == "done":
        outcome = "deployed"
    elif steps.get("evaluate", {}).get("status") == "done" and not steps["evaluate"].get("result", {}).get("passed"):
        outcome = "rejected"
    elif cycle.model_version_id:
        outcome = "candidate"
    elif cycle.sft_run_id or cycle.rl_run_id:
        outcome = "trained"
    else:
        outcome = "nothing trained"
    if outcome == "rejected" and steps.get("deploy", {}).get("status") == "skipped":
        _set_step(cycle, "deploy", reason="the evaluation gate rejected the model")
    cycle.status, cycle.outcome, cycle.step = "completed", outcome, None
    cycle.finished_at = cycle.updated_at = now
    cycle.next_attempt_at = None


def describe(cycle: Cycle | None, progress: dict[str, Any] | None = None) -> str:
    """One status line, e.g. ``cycle 3: SFT 40%``."""
    if cycle is None:
        return "idle"
    label = STEP_LABELS.get(cycle.step or "", cycle.step or "")
    if cycle.status == "running":
        text = f"cycle {cycle.number}: {label}"
        if progress and progress.get("fraction") is not None:
            text += f" {float(progress['fraction']):.0%}"
        return text
    if cycle.status == "waiting":
        when = cycle.next_attempt_at.strftime("%H:%M:%S UTC") if cycle.next_attempt_at else "soon"
        return f"cycle {cycle.number}: {label} failed, retrying at {when}"
    if cycle.status == "blocked":
        return f"cycle {cycle.number} blocked at {label}: {cycle.error}"
    return f"cycle {cycle.number} {cycle.status}: {cycle.outcome}"


# ---------------------------------------------------------------------------------------------
# The engine


class CycleEngine:
    """Starts cycles at the thresholds and advances them, one step at a time, in child processes."""

    def __init__(self, settings: Settings, *, stop: threading.Event | None = None,
                 notifier: Notifier | None = None, runner: ChildRunner | None = None,
                 lock: FileLock | None = None) -> None:
        self.settings = settings
        self.agent = settings.agent
        self.stop = stop or threading.Event()
        self.notifier = notifier or Notifier({})
        self.lock = lock or pipeline_lock(settings.home)
        self.runner = runner or ChildRunner(settings.home, self.stop, self.agent.child_stop_timeout_seconds,
                                            on_progress=self._on_progress)
        self._current: tuple[int, str] | None = None

    # -- status ------------------------------------------------------------------------------

    def _on_progress(self, progress: dict[str, Any]) -> None:
        if self._current is None:
            return
        number, step = self._current
        pct = progress.get("fraction")
        text = f"cycle {number}: {STEP_LABELS.get(step, step)}"
        if pct is not None:
            text += f" {float(pct):.0%}"
        if progress.get("message"):
            text += f" ({progress['message']})"
        self.notifier.status(text)

    def _announce(self, text: str) -> None:
        self.notifier.status(text)

    # -- cycle check ---------------------------------------------------------------------------

    def tick(self, *, force: bool = False) -> Cycle | None:
        """One cycle check: resume the open cycle, or start one when due (or ``force``), and
        advance it as far as it can go now. Returns the cycle worked on, or None."""
        if self.stop.is_set():
            return None
        try:
            self.lock.acquire("agent cycle check", wait=False, agent=True)
        except LockBusy as busy:
            log.info("pipeline busy, cycle check skipped", holder=busy.holder.get("what"), pid=busy.holder.get("pid"))
            return None
        try:
            cycle_id = self.ensure_cycle(force=force)
            if cycle_id is None:
                return None
            self.advance(cycle_id)
            with session_scope(self.settings) as session:
                cycle = session.get(Cycle, cycle_id)
                session.expunge(cycle)
            return cycle
        finally:
            self._current = None
            self.lock.release()

    def ensure_cycle(self, *, force: bool = False) -> int | None:
        """The id of the open cycle, or of a new one when the thresholds say so (or ``force``);
        None when no cycle is due. Call with the pipeline lock held."""
        with session_scope(self.settings) as session:
            cycle = open_cycle(session)
            if cycle is None:
                th = threshold(session, self.agent, self.settings)
                if not (th.due or force) or th.new == 0:
                    # Forced or not, a cycle never retrains on exactly the data of the last one.
                    self._announce(f"idle: {th.new}/{th.required} {th.basis.split(' (')[0]} for the next cycle")
                    return None
                cycle = self._start(session, th, "manual" if force else "threshold")
            elif force and cycle.status == "waiting":
                cycle.next_attempt_at = None  # asked to run now: retry without waiting
            return cycle.id

    def _start(self, session: Session, th: Threshold, trigger: str) -> Cycle:
        number = int(session.exec(select(func.max(Cycle.number))).one() or 0) + 1
        # The threshold stopped counting once it was reached: the cycle records the whole count.
        new = count_usable(session, self.settings, uncovered=True)[0] if th.at_least else th.new
        cycle = Cycle(
            number=number,
            status="running",
            trigger=trigger,
            steps=plan_steps(number, self.agent),
            usable_traces=new if th.first else count_usable(session, self.settings)[0],
            new_traces=new,
            trace_watermark=mark_covered(session, number),
            config={
                "agent": self.agent.model_dump(),
                "train": self.settings.train.model_dump(),
                "reward": self.settings.reward.model_dump(),
            },
        )
        cycle.step = next_step(cycle)
        session.add(cycle)
        session.flush()
        log.info("cycle started", cycle=number, trigger=trigger, new_traces=new, required=th.required,
                 plan={k: v["status"] for k, v in cycle.steps.items()})
        return cycle

    def advance(self, cycle_id: int) -> None:
        """Run the cycle's remaining steps until it finishes, waits, blocks, or the agent stops."""
        while not self.stop.is_set():
            with session_scope(self.settings) as session:
                cycle = session.get(Cycle, cycle_id)
                if cycle is None or cycle.status in FINISHED_STATUSES:
                    return
                if cycle.status == "waiting" and cycle.next_attempt_at and cycle.next_attempt_at > utcnow():
                    self._announce(describe(cycle))
                    return
                step = next_step(cycle)
                if step is None:
                    finish(cycle)
                    log.info("cycle finished", cycle=cycle.number, outcome=cycle.outcome)
                    self._announce(describe(cycle))
                    return
                entry = cycle.steps.get(step, {})
                if entry.get("status") == "running" and self._recover(cycle, step):
                    continue
                reason = precondition(cycle, step)
                if reason is not None:
                    _set_step(cycle, step, status="skipped", reason=reason)
                    log.info("step skipped", cycle=cycle.number, phase=step, reason=reason)
                    continue
                if step == "dataset":
                    # The dataset covers every trace stored by now (marked before the child
                    # reads them: this commits first); later ones count for the next cycle.
                    cycle.trace_watermark = mark_covered(session, cycle.number)
                _set_step(cycle, step, status="running", started_at=utcnow().isoformat(), error=None)
                cycle.step, cycle.status, cycle.updated_at = step, "running", utcnow()
                number = cycle.number
            self._run(cycle_id, number, step)

    def _recover(self, cycle: Cycle, step: str) -> bool:
        """The agent died while ``step`` ran. Record the child's result if it left one (True),
        else stop any orphaned child so the step can run again (False)."""
        assert cycle.id is not None
        leftover = self.runner.leftover(cycle.id, step)
        if cycle.child_pid:
            reap_orphan(cycle.child_pid, self.agent.child_stop_timeout_seconds)
        if leftover is not None:
            log.info("step had finished before the agent stopped; recording its result",
                     cycle=cycle.number, phase=step)
            apply_outcome(cycle, step, leftover, self.agent)
            return True
        log.warning("resuming a step interrupted by an agent crash or kill", cycle=cycle.number, phase=step)
        _set_step(cycle, step, status="pending", note="interrupted by an agent crash or kill; resumed")
        return False

    def _run(self, cycle_id: int, number: int, step: str) -> None:
        self._current = (number, step)
        self.lock.update(f"cycle {number}: {step}", cycle=number, step=step)
        self._announce(f"cycle {number}: {STEP_LABELS.get(step, step)}")
        bound = log.bind(cycle=number, phase=step)
        bound.info("step started")

        def remember_pid(pid: int) -> None:
            with session_scope(self.settings) as session:
                row = session.get(Cycle, cycle_id)
                if row is not None:
                    row.child_pid = pid

        outcome = self.runner.run(step, cycle_id, lock_fd=self.lock.fd, on_start=remember_pid)
        with session_scope(self.settings) as session:
            cycle = session.get(Cycle, cycle_id)
            assert cycle is not None
            apply_outcome(cycle, step, outcome, self.agent)
            status = cycle.status
            text = describe(cycle)
        if outcome.status == "done":
            bound.info("step done", seconds=outcome.seconds, result=outcome.result)
        elif outcome.status == "interrupted":
            bound.warning("step interrupted; it resumes when the agent runs again")
        elif outcome.status == "unavailable":
            bound.warning("step not available", reason=outcome.error, cycle_status=status)
        else:
            bound.error("step failed", error=outcome.error, cycle_status=status)
        self._announce(text)
        self._current = None


def cycle_json(cycle: Cycle) -> dict[str, Any]:
    """The JSON form of a cycle (``ccrl agent status --json``, ``ccrl runs``)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    duration = None
    if cycle.finished_at and cycle.created_at:
        duration = round((cycle.finished_at - cycle.created_at).total_seconds(), 3)
    return {
        "number": cycle.number,
        "status": cycle.status,
        "outcome": cycle.outcome,
        "step": cycle.step,
        "trigger": cycle.trigger,
        "steps": {name: cycle.steps.get(name, {}) for name in STEP_ORDER},
        "new_traces": cycle.new_traces,
        "trace_watermark": cycle.trace_watermark,
        "dataset_version_id": cycle.dataset_version_id,
        "sft_run_id": cycle.sft_run_id,
        "rl_run_id": cycle.rl_run_id,
        "model_version_id": cycle.model_version_id,
        "error": cycle.error,
        "next_attempt_at": iso(cycle.next_attempt_at),
        "config": cycle.config,
        "created_at": iso(cycle.created_at),
        "finished_at": iso(cycle.finished_at),
        "duration_s": duration,
    }
