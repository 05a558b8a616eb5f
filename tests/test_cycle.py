"""The cycle state machine's decisions, tested directly on real store rows: the plan (RL on
every 2nd cycle), the thresholds (first at 50, then every 50 new, a backlog is one cycle, no
trace counted twice), failures with backoff and a cap, missing modules, the deploy gate, and
recovery of a step the agent died in."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ccrl.agent.core.config import AgentSettings, Settings
from ccrl.agent.daemon.child import StepOutcome, result_path
from ccrl.agent.daemon.cycle import (
    CycleEngine,
    apply_outcome,
    backoff_seconds,
    describe,
    finish,
    mark_covered,
    next_step,
    plan_steps,
    precondition,
    threshold,
)
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import Cycle, DatasetVersion, utcnow

from agent_helpers import add_unusable_traces, add_usable_traces


def new_cycle(number: int = 1, agent: AgentSettings | None = None) -> Cycle:
    cycle = Cycle(number=number, status="running", steps=plan_steps(number, agent or AgentSettings()))
    cycle.step = next_step(cycle)
    return cycle


# -- plan ------------------------------------------------------------------------------------


def test_rl_runs_only_on_even_cycles_by_default():
    agent = AgentSettings()
    for number in range(1, 7):
        plan = plan_steps(number, agent)
        assert plan["sft"]["status"] == "pending"
        assert plan["rl"]["status"] == ("pending" if number % 2 == 0 else "skipped")
    assert plan_steps(3, agent)["rl"]["reason"] == "RL runs every 2nd cycle (ppo_frequency = 2); this is cycle 3"
    every_third = AgentSettings(ppo_frequency=3, sft_frequency=0)
    assert [plan_steps(n, every_third)["rl"]["status"] for n in (1, 2, 3, 6)] == ["skipped", "skipped", "pending", "pending"]
    assert plan_steps(1, every_third)["sft"] == {"status": "skipped", "attempts": 0, "reason": "SFT is off (sft_frequency = 0)"}


def test_export_and_deploy_follow_their_switches():
    plan = plan_steps(1, AgentSettings())
    assert plan["export"]["status"] == "pending"
    assert plan["deploy"]["status"] == "skipped" and "auto_deploy_ollama is off" in plan["deploy"]["reason"]
    plan = plan_steps(1, AgentSettings(auto_export_gguf=False, auto_deploy_ollama=True))
    assert plan["export"]["status"] == "skipped" and plan["deploy"]["status"] == "pending"


# -- thresholds ------------------------------------------------------------------------------


def test_first_cycle_at_min_traces_then_every_n_new(ccrl_home):
    settings = Settings()
    agent = settings.agent
    add_usable_traces(settings, 49)
    add_unusable_traces(settings, 6)  # still open, or no tool calls: the dataset filters drop them
    with session_scope(settings) as db:
        th = threshold(db, agent)
        assert (th.due, th.new, th.required, th.remaining, th.first) == (False, 49, 50, 1, True)
    add_usable_traces(settings, 1)
    with session_scope(settings) as db:
        assert threshold(db, agent).due
        # The first cycle covered every trace stored when its dataset was built.
        watermark = mark_covered(db, 1)
        db.add(Cycle(number=1, status="completed", outcome="candidate", steps={}, trace_watermark=watermark))
    with session_scope(settings) as db:
        th = threshold(db, agent)
        assert (th.due, th.new, th.required, th.since_watermark, th.first) == (False, 0, 50, watermark, False)
    add_usable_traces(settings, 49)
    with session_scope(settings) as db:
        assert threshold(db, agent).new == 49 and not threshold(db, agent).due
    add_usable_traces(settings, 1)
    with session_scope(settings) as db:
        assert threshold(db, agent).due


def test_a_failed_cycle_waits_for_new_data(ccrl_home):
    settings = Settings()
    add_usable_traces(settings, 60)
    with session_scope(settings) as db:
        db.add(Cycle(number=1, status="failed", outcome="failed", steps={}, trace_watermark=mark_covered(db, 1)))
    with session_scope(settings) as db:
        th = threshold(db, settings.agent)
        assert (th.due, th.new, th.required) == (False, 0, 50)


def test_a_backlog_starts_one_cycle_on_all_of_it(ccrl_home):
    """200 imported traces (four cycles' worth): one cycle (its dataset covers all of them)."""
    settings = Settings()
    add_usable_traces(settings, 200)
    engine = CycleEngine(settings)
    first = engine.ensure_cycle()
    with session_scope(settings) as db:
        cycle = db.get(Cycle, first)
        assert (cycle.number, cycle.new_traces, cycle.usable_traces, cycle.trace_watermark) == (1, 200, 200, 200)
    add_usable_traces(settings, 60)  # more arrive while it runs: they wait for the next cycle
    for _ in range(3):
        assert engine.ensure_cycle() == first  # the same cycle, resumed
    with session_scope(settings) as db:
        assert len(db.exec(Cycle.__table__.select()).all()) == 1  # type: ignore[attr-defined]


def test_no_new_traces_no_cycle_even_when_forced(ccrl_home):
    settings = Settings()
    add_usable_traces(settings, 10)
    with session_scope(settings) as db:
        db.add(Cycle(number=1, status="completed", outcome="candidate", steps={}, trace_watermark=mark_covered(db, 1)))
    assert CycleEngine(settings).ensure_cycle(force=True) is None
    assert CycleEngine(settings).tick(force=True) is None


# -- transitions ----------------------------------------------------------------------------


def test_failures_retry_with_doubling_backoff_then_fail_the_cycle():
    agent = AgentSettings(max_step_attempts=3, retry_backoff_seconds=60, retry_backoff_max_seconds=100)
    cycle = new_cycle()
    now = utcnow()
    apply_outcome(cycle, "dataset", StepOutcome("done", {"dataset_version_id": 7, "trace_watermark": 40}), agent, now)
    assert (cycle.dataset_version_id, cycle.trace_watermark, next_step(cycle)) == (7, 40, "sft")
    apply_outcome(cycle, "sft", StepOutcome("failed", error="CUDA out of memory"), agent, now)
    assert cycle.status == "waiting" and cycle.next_attempt_at == now + timedelta(seconds=60)
    assert cycle.steps["sft"]["attempts"] == 1 and next_step(cycle) == "sft"
    assert "sft failed (attempt 1/3): CUDA out of memory" == cycle.error
    assert "retrying at" in describe(cycle)
    apply_outcome(cycle, "sft", StepOutcome("failed", error="again"), agent, now)
    assert cycle.next_attempt_at == now + timedelta(seconds=100)  # 120 capped at 100
    apply_outcome(cycle, "sft", StepOutcome("failed", error="third"), agent, now)
    assert (cycle.status, cycle.outcome, cycle.finished_at) == ("failed", "failed", now)
    assert next_step(cycle) is None
    assert [backoff_seconds(n, AgentSettings()) for n in (1, 2, 3, 10)] == [300, 600, 1200, 3600]


def test_an_interrupted_step_runs_again_without_counting_an_attempt():
    cycle = new_cycle()
    apply_outcome(cycle, "dataset", StepOutcome("interrupted", error="stopped"), AgentSettings())
    assert cycle.steps["dataset"]["status"] == "pending" and cycle.steps["dataset"]["attempts"] == 0
    assert cycle.status == "running" and next_step(cycle) == "dataset"


def test_missing_modules_block_required_steps_and_pass_over_optional_ones():
    agent = AgentSettings()
    cycle = new_cycle(2)
    apply_outcome(cycle, "dataset", StepOutcome("unavailable", error="the dataset builder is not installed"), agent)
    assert cycle.status == "blocked" and next_step(cycle) == "dataset"  # tried again at the next check
    assert describe(cycle) == "cycle 2 blocked at dataset: the dataset builder is not installed"
    apply_outcome(cycle, "dataset", StepOutcome("done", {"dataset_version_id": 1}), agent)
    apply_outcome(cycle, "sft", StepOutcome("done", {"run_id": 3}), agent)
    apply_outcome(cycle, "rl", StepOutcome("unavailable", error="the RL trainer is not installed"), agent)
    assert cycle.status == "running" and next_step(cycle) == "export"
    apply_outcome(cycle, "export", StepOutcome("done", {"model_version_id": 9}), agent)
    assert (cycle.sft_run_id, cycle.rl_run_id, cycle.model_version_id) == (3, None, 9)


def test_auto_deploy_off_leaves_a_candidate():
    agent = AgentSettings(auto_deploy_ollama=False)
    cycle = new_cycle(1, agent)
    for step, result in [("dataset", {"dataset_version_id": 1}), ("sft", {"run_id": 1}),
                         ("export", {"model_version_id": 1}), ("evaluate", {"passed": True})]:
        assert next_step(cycle) == step and precondition(cycle, step) is None
        apply_outcome(cycle, step, StepOutcome("done", result), agent)
    assert next_step(cycle) is None
    finish(cycle)
    assert (cycle.status, cycle.outcome) == ("completed", "candidate")


def test_the_gate_decides_deployment():
    agent = AgentSettings(auto_deploy_ollama=True)
    passed = new_cycle(2, agent)
    for step, result in [("dataset", {"dataset_version_id": 1}), ("sft", {"run_id": 1}), ("rl", {"run_id": 2}),
                         ("export", {"model_version_id": 1}), ("evaluate", {"passed": True})]:
        apply_outcome(passed, step, StepOutcome("done", result), agent)
    assert next_step(passed) == "deploy" and precondition(passed, "deploy") is None
    apply_outcome(passed, "deploy", StepOutcome("done", {"model_version_id": 1}), agent)
    finish(passed)
    assert passed.outcome == "deployed"

    rejected = new_cycle(1, agent)
    for step, result in [("dataset", {"dataset_version_id": 1}), ("sft", {"run_id": 1}),
                         ("export", {"model_version_id": 1}), ("evaluate", {"passed": False})]:
        apply_outcome(rejected, step, StepOutcome("done", result), agent)
    assert precondition(rejected, "deploy") == "the evaluation gate rejected the model"
    rejected.steps["deploy"] = {"status": "skipped", "reason": precondition(rejected, "deploy")}
    finish(rejected)
    assert rejected.outcome == "rejected"
    # Auto-deploy off and the gate said no: the record says the gate, not "stays a candidate".
    off = new_cycle(1, AgentSettings(auto_deploy_ollama=False))
    for step, result in [("dataset", {"dataset_version_id": 1}), ("sft", {"run_id": 1}),
                         ("export", {"model_version_id": 1}), ("evaluate", {"passed": False})]:
        apply_outcome(off, step, StepOutcome("done", result), agent)
    finish(off)
    assert off.outcome == "rejected" and off.steps["deploy"]["reason"] == "the evaluation gate rejected the model"

    unevaluated = new_cycle(1, agent)
    for step, result in [("dataset", {"dataset_version_id": 1}), ("sft", {"run_id": 1}),
                         ("export", {"model_version_id": 1})]:
        apply_outcome(unevaluated, step, StepOutcome("done", result), agent)
    apply_outcome(unevaluated, "evaluate", StepOutcome("unavailable", error="evaluation not installed"), agent)
    reason = precondition(unevaluated, "deploy")
    assert reason is not None and "only a model that passed the evaluation gate is deployed" in reason


def test_nothing_trained_means_nothing_exported():
    cycle = new_cycle(1, AgentSettings(sft_frequency=0, ppo_frequency=0))
    apply_outcome(cycle, "dataset", StepOutcome("done", {"dataset_version_id": 1}), AgentSettings())
    assert next_step(cycle) == "export" and precondition(cycle, "export") == "nothing was trained in this cycle"


# -- recovery after the agent died mid-step -------------------------------------------------


def test_a_result_written_before_the_agent_died_is_recorded_not_redone(ccrl_home):
    settings = Settings()
    add_usable_traces(settings, 50)
    with session_scope(settings) as db:
        version = DatasetVersion(number=1, path=str(ccrl_home / "datasets" / "v1"), trace_count=50)
        cycle = new_cycle(1)
        cycle.steps = {**cycle.steps, "dataset": {"status": "running", "attempts": 0}}
        cycle.step = "dataset"
        db.add(version)
        db.add(cycle)
        db.flush()
        cycle_id, version_id = cycle.id, version.id
    # The child finished and wrote its result; the agent was killed before recording it.
    path = result_path(settings.home, cycle_id, "dataset")
    path.parent.mkdir(parents=True)
    path.write_text(f'{{"ok": true, "result": {{"dataset_version_id": {version_id}, "trace_watermark": 50}}}}')
    engine = CycleEngine(settings)
    with session_scope(settings) as db:
        row = db.get(Cycle, cycle_id)
        assert engine._recover(row, "dataset") is True
        assert row.steps["dataset"]["status"] == "done" and row.dataset_version_id == version_id
        assert next_step(row) == "sft"


@pytest.mark.parametrize("status", ["running", "waiting", "blocked"])
def test_only_one_cycle_is_open_at_a_time(ccrl_home, status):
    settings = Settings()
    add_usable_traces(settings, 60)
    with session_scope(settings) as db:
        db.add(Cycle(number=1, status=status, steps=plan_steps(1, settings.agent), step="sft",
                     next_attempt_at=utcnow() + timedelta(hours=1) if status == "waiting" else None))
    engine = CycleEngine(settings)
    with session_scope(settings) as db:
        assert engine.ensure_cycle() == db.exec(Cycle.__table__.select()).one().id  # type: ignore[attr-defined]
        assert len(db.exec(Cycle.__table__.select()).all()) == 1  # type: ignore[attr-defined]


# -- what `ccrl status` and `ccrl agent status` say -----------------------------------------


def test_status_tells_the_agents_story(ccrl_home):
    import json

    from typer.testing import CliRunner

    from ccrl.agent.cli import app

    settings = Settings()
    add_usable_traces(settings, 30)
    runner = CliRunner()
    info = json.loads(runner.invoke(app, ["status", "--json"]).stdout)["agent"]
    assert info["running"] is False and info["error"] is None and info["current_cycle"] is None
    assert info["threshold"] == {**info["threshold"], "new": 30, "required": 50, "remaining": 20, "due": False}
    assert info["status_line"] == "idle: 30/50 usable traces for the next cycle"
    with session_scope(settings) as db:
        cycle = new_cycle(1)
        cycle.trace_watermark = mark_covered(db, 1)
        apply_outcome(cycle, "dataset", StepOutcome("failed", error="disk full"), settings.agent)
        db.add(cycle)
    add_usable_traces(settings, 5)
    info = json.loads(runner.invoke(app, ["agent", "status", "--json"]).stdout)
    assert info["current_cycle"]["number"] == 1 and info["current_cycle"]["status"] == "waiting"
    # While cycle 1 is open, the count is towards the cycle after it.
    assert (info["threshold"]["new"], info["threshold"]["required"]) == (5, 50)
    assert info["last_error"] == "cycle 1: dataset failed (attempt 1/3): disk full"
    table = runner.invoke(app, ["status"])
    assert table.exit_code == 0
    for text in ("agent now", "cycle 1: dataset failed, retrying at", "next cycle", "last error", "disk full"):
        assert text in table.stdout, text
    human = runner.invoke(app, ["agent", "status"])
    assert human.exit_code == 0 and "not running" in human.stdout and "disk full" in human.stdout


def test_a_turn_open_when_a_cycle_starts_counts_once_it_completes(ccrl_home):
    """Not an id watermark: a trace with a lower id than the last cycle's watermark that was
    still open then (its turn ran on) counts towards the next cycle when it completes."""
    from ccrl.agent.store.models import Trace

    settings = Settings()
    ids = add_usable_traces(settings, 50)
    with session_scope(settings) as db:
        running = db.get(Trace, ids[10])
        running.status = "open"  # Claude is still working on this turn
        db.add(running)
    with session_scope(settings) as db:
        db.add(Cycle(number=1, status="completed", outcome="candidate", steps={}, trace_watermark=mark_covered(db, 1)))
    with session_scope(settings) as db:
        assert threshold(db, settings.agent).new == 0
        done = db.get(Trace, ids[10])
        done.status = "complete"  # the turn's Stop arrives after the cycle
        db.add(done)
    with session_scope(settings) as db:
        th = threshold(db, settings.agent)
        assert (th.new, th.since_watermark) == (1, max(ids))  # below the watermark, counted all the same


def test_ids_reused_after_a_purge_still_count(ccrl_home):
    """SQLite hands out the purged newest rows' ids again: new traces with those ids are new."""
    from sqlalchemy import delete

    from ccrl.agent.store.models import ToolCall, Trace

    settings = Settings()
    ids = add_usable_traces(settings, 60)
    with session_scope(settings) as db:
        db.add(Cycle(number=1, status="completed", outcome="candidate", steps={}, trace_watermark=mark_covered(db, 1)))
    with session_scope(settings) as db:  # `ccrl purge` of the newest session's turns
        db.exec(delete(ToolCall).where(ToolCall.trace_id.in_(ids[-10:])))
        db.exec(delete(Trace).where(Trace.id.in_(ids[-10:])))
    again = add_usable_traces(settings, 50)
    assert min(again) <= max(ids)  # the ids came back
    with session_scope(settings) as db:
        assert threshold(db, settings.agent).new == 50


def test_the_threshold_stops_counting_once_reached_and_the_cycle_counts_all(ccrl_home):
    settings = Settings()
    add_usable_traces(settings, 120)
    with session_scope(settings) as db:
        th = threshold(db, settings.agent)
    assert (th.new, th.due, th.as_dict()["new_at_least"]) == (50, True, True)
    cycle_id = CycleEngine(settings).ensure_cycle()
    with session_scope(settings) as db:
        cycle = db.get(Cycle, cycle_id)
        assert (cycle.new_traces, cycle.usable_traces) == (120, 120)
