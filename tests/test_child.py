"""Steps in child processes, for real: a step that fails records its error, a child killed from
outside (as the out-of-memory killer does) is a failed step with the signal named, and the
cycle retries with backoff up to its cap, then fails and waits for new data."""

from __future__ import annotations

import os
import signal
import threading

import datasets  # noqa: E402,F401  (the dataset step needs the [train] extra, part of the test environment)

from ccrl.agent.core.config import Settings  # noqa: E402
from ccrl.agent.daemon.child import ChildRunner  # noqa: E402
from ccrl.agent.daemon.cycle import CycleEngine, next_step, plan_steps  # noqa: E402
from ccrl.agent.store.db import session_scope  # noqa: E402
from ccrl.agent.store.models import Cycle, DatasetVersion  # noqa: E402

from agent_helpers import add_unusable_traces, add_usable_traces  # noqa: E402


def _cycle(settings: Settings) -> int:
    with session_scope(settings) as db:
        cycle = Cycle(number=1, status="running", steps=plan_steps(1, settings.agent), step="dataset")
        db.add(cycle)
        db.flush()
        return cycle.id


def test_a_failing_step_records_its_error(ccrl_home):
    settings = Settings()
    add_unusable_traces(settings, 4)  # nothing survives the dataset filters
    runner = ChildRunner(settings.home, threading.Event(), stop_timeout=30)
    outcome = runner.run("dataset", _cycle(settings))
    assert outcome.status == "failed" and outcome.returncode == 1
    assert outcome.error.startswith("NoUsableTraces: no usable traces: 4 seen")


def test_a_child_killed_from_outside_is_a_failed_step_naming_the_signal(ccrl_home):
    settings = Settings()
    add_usable_traces(settings, 6)
    runner = ChildRunner(settings.home, threading.Event(), stop_timeout=30)
    outcome = runner.run("dataset", _cycle(settings), on_start=lambda pid: os.kill(pid, signal.SIGKILL))
    assert (outcome.status, outcome.returncode) == ("failed", -signal.SIGKILL)
    assert outcome.error == ("the step's process was killed by SIGKILL (often the kernel's out-of-memory "
                             "killer: see `journalctl -k`)")
    with session_scope(settings) as db:
        assert db.exec(DatasetVersion.__table__.select()).all() == []  # type: ignore[attr-defined]


def test_unknown_steps_are_reported_not_faked(ccrl_home):
    settings = Settings()
    runner = ChildRunner(settings.home, threading.Event(), stop_timeout=30)
    outcome = runner.run("teleport", _cycle(settings))
    assert outcome.status == "failed" and "unknown step 'teleport'" in outcome.error


def test_failed_steps_retry_with_backoff_then_the_cycle_fails(ccrl_home, monkeypatch):
    monkeypatch.setenv("CCRL_AGENT__MAX_STEP_ATTEMPTS", "2")
    monkeypatch.setenv("CCRL_AGENT__RETRY_BACKOFF_SECONDS", "3600")
    settings = Settings()
    add_unusable_traces(settings, 4)
    cycle_id = _cycle(settings)
    engine = CycleEngine(settings)
    engine.advance(cycle_id)
    with session_scope(settings) as db:
        cycle = db.get(Cycle, cycle_id)
        assert cycle.status == "waiting" and cycle.steps["dataset"]["attempts"] == 1
        assert "dataset failed (attempt 1/2): NoUsableTraces" in cycle.error
        waiting_until = cycle.next_attempt_at
    engine.advance(cycle_id)  # too early: nothing runs
    with session_scope(settings) as db:
        assert db.get(Cycle, cycle_id).next_attempt_at == waiting_until
        db.get(Cycle, cycle_id).next_attempt_at = None  # as `ccrl agent once` does: retry now
    engine.advance(cycle_id)
    with session_scope(settings) as db:
        cycle = db.get(Cycle, cycle_id)
        assert (cycle.status, cycle.outcome, cycle.steps["dataset"]["attempts"]) == ("failed", "failed", 2)
        assert next_step(cycle) is None and cycle.finished_at is not None


def test_an_orphan_step_child_is_known_by_its_module_name_old_or_new():
    """An agent restarted after a crash reaps the step child it left behind, found by its command
    line; an orphan started by a version before the agent's packages runs ``ccrl.agent.child``."""
    import subprocess
    import sys

    from ccrl.agent.daemon.child import pid_is_step_child

    procs = {name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", name])
             for name in ("ccrl.agent.daemon.child", "ccrl.agent.child", "ccrl.agent.children")}
    try:
        assert {name: pid_is_step_child(p.pid) for name, p in procs.items()} == {
            "ccrl.agent.daemon.child": True, "ccrl.agent.child": True, "ccrl.agent.children": False}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    assert not pid_is_step_child(procs["ccrl.agent.child"].pid)  # gone
