"""The agent as a real process (`ccrl agent run`) with short intervals, real steps in child
processes and a tiny random Llama: traces cross the threshold and a cycle trains; kill -9 in
the middle of SFT and a restart finish the cycle without redoing what was done; SIGTERM during
SFT exits cleanly, leaving the step to resume.

Export is switched off here (``auto_export_gguf=false``): a tiny random model cannot pass the
exporter's "stops at end of turn" verification, and exporting is tested with its own module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trl  # noqa: E402,F401  (the [train] extra is part of the test environment: missing, this fails)

from sqlmodel import select  # noqa: E402

from ccrl.agent.core.config import Settings  # noqa: E402
from ccrl.agent.daemon.scheduler import read_state  # noqa: E402
from ccrl.agent.store.db import session_scope  # noqa: E402
from ccrl.agent.store.models import Cycle, DatasetVersion, Evaluation, TrainingRun  # noqa: E402
from ccrl.trainers.base_models import build_tiny_llama  # noqa: E402

from agent_helpers import add_usable_traces  # noqa: E402
from conftest import embedded_tokenizer_dir  # noqa: E402

CCRL = Path(sys.executable).parent / "ccrl"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    return build_tiny_llama(root / "tiny", embedded_tokenizer_dir())


def agent_env(tiny_model: Path, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "CCRL_AGENT__INGEST_INTERVAL_SECONDS": "0.5",
        "CCRL_AGENT__CYCLE_CHECK_INTERVAL_SECONDS": "1",
        "CCRL_AGENT__MIN_TRACES_FOR_SFT": "12",
        "CCRL_AGENT__TRACES_PER_TRAINING_CYCLE": "12",
        "CCRL_AGENT__AUTO_EXPORT_GGUF": "false",
        "CCRL_AGENT__CHILD_STOP_TIMEOUT_SECONDS": "40",
        "CCRL_AGENT__RETRY_BACKOFF_SECONDS": "1",
        "CCRL_TRAIN__BASE_MODEL": str(tiny_model),
        "CCRL_TRAIN__MAX_STEPS": "1",
        "CCRL_TRAIN__BATCH_SIZE": "1",
        # Short sequences and one pass per optimizer step: the steps stay seconds long on a busy
        # 2-core machine, so a stop request is answered well inside the stop timeout.
        "CCRL_TRAIN__GRADIENT_ACCUMULATION_STEPS": "1",
        "CCRL_TRAIN__MAX_LENGTH": "512",
        # A small evaluation: a few held-out decisions and plans, short generations.
        "CCRL_EVAL__MAX_DECISIONS": "6",
        "CCRL_EVAL__MAX_PLANS": "1",
        "CCRL_EVAL__DECISION_MAX_NEW_TOKENS": "8",
        "CCRL_EVAL__PLAN_MAX_NEW_TOKENS": "16",
        "CCRL_EVAL__THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.update(overrides)
    return env


class Agent:
    """`ccrl agent run` in the background, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self.log = open(log, "a")  # noqa: SIM115
        self.proc = subprocess.Popen([str(CCRL), "agent", "run"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text()


def wait_for(what: str, check: Callable[[], Any], timeout: float, agent: Agent | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if agent is not None and agent.proc.poll() is not None:
            raise AssertionError(f"the agent exited ({agent.proc.returncode}) while waiting for {what}:\n{agent.output()[-4000:]}")
        time.sleep(0.3)
    tail = agent.output()[-4000:] if agent else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def cycle_row(settings: Settings, number: int = 1) -> Cycle | None:
    with session_scope(settings) as db:
        row = db.exec(select(Cycle).where(Cycle.number == number)).first()
        if row is not None:
            db.expunge(row)
        return row


def rows(settings: Settings, model: Any) -> list[Any]:
    with session_scope(settings) as db:
        found = list(db.exec(select(model)))
        for row in found:
            db.expunge(row)
        return found


def test_traces_crossing_the_threshold_start_a_cycle_that_trains(ccrl_home, tiny_model, tmp_path):
    settings = Settings()
    add_usable_traces(settings, 8)
    agent = Agent(agent_env(tiny_model), tmp_path / "agent.log")
    try:
        wait_for("a cycle check", lambda: read_state(settings).get("last_cycle_check_at"), 60, agent)
        time.sleep(1.5)  # a few more checks below the threshold
        assert cycle_row(settings) is None, "no cycle below min_traces_for_sft"
        add_usable_traces(settings, 8)  # 16 >= 12: the next check starts cycle 1
        done = wait_for("cycle 1 to finish", lambda: (c := cycle_row(settings)) and c.status == "completed" and c,
                        600, agent)
    finally:
        assert agent.stop() == 0
    steps = done.steps
    assert done.trigger == "threshold" and done.new_traces == 16
    assert steps["dataset"]["status"] == "done" and steps["sft"]["status"] == "done"
    assert steps["rl"]["status"] == "skipped" and "every 2nd cycle" in steps["rl"]["reason"]
    assert steps["export"] == {**steps["export"], "status": "skipped", "reason": "auto_export_gguf is off"}
    # Evaluated for real (the tiny model against the base and the learn-nothing baselines);
    # without export the gate judges the training run, and its decision decides the outcome.
    evaluation = steps["evaluate"]
    assert evaluation["status"] == "done" and evaluation["result"]["training_run_id"] == done.sft_run_id
    assert evaluation["result"]["checks"] and isinstance(evaluation["result"]["passed"], bool)
    assert steps["deploy"]["status"] == "skipped"
    assert done.outcome == ("trained" if evaluation["result"]["passed"] else "rejected")
    assert len(rows(settings, Evaluation)) >= 2  # the candidate and what it was compared with
    versions = rows(settings, DatasetVersion)
    runs = rows(settings, TrainingRun)
    assert [v.id for v in versions] == [done.dataset_version_id] and versions[0].trace_count == 16
    assert len(runs) == 1 and runs[0].id == done.sft_run_id
    assert (runs[0].status, runs[0].cycle, runs[0].dataset_version_id) == ("completed", 1, done.dataset_version_id)
    assert done.trace_watermark == 16
    log = agent.output()
    assert "cycle started" in log and "cycle finished" in log
    # The history shows it, from the real rows.
    from typer.testing import CliRunner

    from ccrl.agent.cli import app

    shown = CliRunner().invoke(app, ["runs", "show", "1", "--cycle", "--json"])
    assert shown.exit_code == 0, shown.output
    import json

    history = json.loads(shown.stdout)
    assert history["outcome"] == done.outcome and [r["id"] for r in history["training_runs"]] == [done.sft_run_id]
    assert any(p.endswith("loss_curve.png") for p in history["training_runs"][0]["plots"])
    status = json.loads(CliRunner().invoke(app, ["agent", "status", "--json"]).stdout)
    assert status["running"] is False and status["current_cycle"] is None
    assert (status["threshold"]["new"], status["threshold"]["since_trace_id"]) == (0, 16)
    assert [c["number"] for c in status["recent_cycles"]] == [1]


def sft_child(settings: Settings) -> int | None:
    """The pid of the SFT step's child process, once the agent recorded it."""
    cycle = cycle_row(settings)
    if cycle is not None and cycle.step == "sft" and cycle.steps["sft"]["status"] == "running" and cycle.child_pid:
        return cycle.child_pid
    return None


def sft_training(settings: Settings) -> bool:
    """Whether the SFT child reported at least one optimizer step."""
    cycle = cycle_row(settings)
    if cycle is None or cycle.step != "sft":
        return False
    try:
        return (read_progress(settings.home, cycle.id) or {}).get("step", 0) >= 1
    except (OSError, ValueError):
        return False


def read_progress(home: Path, cycle_id: int) -> dict[str, Any] | None:
    import json

    from ccrl.agent.daemon.child import progress_path

    path = progress_path(home, cycle_id, "sft")
    return json.loads(path.read_text()) if path.exists() else None


def test_kill_9_mid_sft_then_restart_finishes_without_redoing_steps(ccrl_home, tiny_model, tmp_path):
    settings = Settings()
    add_usable_traces(settings, 14)
    env = agent_env(tiny_model, CCRL_TRAIN__MAX_STEPS="3")
    first = Agent(env, tmp_path / "agent-1.log")
    try:
        child = wait_for("the SFT step's child", lambda: sft_child(settings), 600, first)
        # Freeze the child so the kill lands mid-step on any machine, however fast it trains.
        os.kill(child, signal.SIGSTOP)
        before = cycle_row(settings)
        assert before.steps["dataset"]["status"] == "done" and before.steps["sft"]["status"] == "running"
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        os.kill(child, signal.SIGCONT)
    finally:
        first.log.close()
    # The orphan notices its agent is gone, finishes the optimizer step it is in, saves a
    # checkpoint and exits: no agent is left to tell it to.
    wait_for("the orphaned step to exit", lambda: not Path(f"/proc/{child}").exists(), 600)
    [run] = rows(settings, TrainingRun)
    assert run.status == "interrupted" and any(Path(run.output_dir).glob("checkpoint-*"))
    dataset_finished = before.steps["dataset"]["finished_at"]

    second = Agent(env, tmp_path / "agent-2.log")
    try:
        done = wait_for("cycle 1 to finish", lambda: (c := cycle_row(settings)) and c.status == "completed" and c,
                        600, second)
    finally:
        assert second.stop() == 0
    assert done.steps["dataset"]["finished_at"] == dataset_finished  # not rebuilt
    assert done.steps["dataset"]["attempts"] == 0 and done.steps["sft"]["attempts"] == 0
    assert len(rows(settings, DatasetVersion)) == 1
    runs = rows(settings, TrainingRun)
    assert [r.id for r in runs] == [run.id] == [done.sft_run_id]  # the same run, resumed, not a second one
    assert runs[0].status == "completed"
    # It continued from the checkpoint written after the kill and ended at the same total.
    assert runs[0].metrics["global_step"] == 3 and runs[0].metrics["resumed_from"].startswith("checkpoint-")
    assert "resuming a step interrupted by an agent crash or kill" in second.output()


def test_sigterm_during_sft_exits_cleanly_and_the_step_resumes_later(ccrl_home, tiny_model, tmp_path):
    settings = Settings()
    add_usable_traces(settings, 14)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    env = agent_env(tiny_model, CCRL_TRAIN__MAX_STEPS="200", NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    agent = Agent(env, tmp_path / "agent.log")
    try:
        wait_for("SFT to train", lambda: sft_training(settings), 600, agent)
        child_pid = cycle_row(settings).child_pid
        [run] = rows(settings, TrainingRun)
        # A manual command meanwhile is told who holds the pipeline, and does nothing.
        for argv in (["export"], ["deploy"]):
            manual = subprocess.run([str(CCRL), *argv], env=env, capture_output=True, text=True, timeout=300)
            assert manual.returncode == 1, manual.stdout + manual.stderr
            said = " ".join(manual.stderr.split())
            assert "the agent is busy with cycle 1: sft" in said and "--wait" in said
        assert len(rows(settings, TrainingRun)) == 1
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        code = agent.proc.wait(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
        agent.log.close()
    assert code == 0, agent.output()[-3000:]
    assert elapsed < 40 + 15, "the agent must be gone before the unit's stop timeout"
    assert not Path(f"/proc/{child_pid}").exists()
    cycle = cycle_row(settings)
    assert cycle.status == "running" and cycle.steps["sft"]["status"] == "pending"
    assert "interrupted" in cycle.steps["sft"]["note"] and cycle.steps["sft"]["attempts"] == 0
    assert cycle.steps["dataset"]["status"] == "done"
    interrupted = rows(settings, TrainingRun)
    assert [(r.id, r.status) for r in interrupted] == [(run.id, "interrupted")]
    messages = []
    notify.settimeout(0.2)
    while True:
        try:
            messages.append(notify.recv(4096).decode())
        except TimeoutError:
            break
    notify.close()
    assert any(m.startswith("STOPPING=1") for m in messages)
    assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in messages)
    assert any("cycle 1: SFT" in m for m in messages)
    log = agent.output()
    assert "step interrupted; it resumes when the agent runs again" in log and "agent stopped" in log
