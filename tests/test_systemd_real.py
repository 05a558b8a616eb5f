"""The agent as a user service under a real ``systemd --user`` and a real journald
(tests/systemd_manager.py), one manager for the whole module, as one user whose Claude Code runs
for real (the e2e harness):

- ``ccrl service install`` + ``systemctl --user start`` returns after READY, the status text says
  what the agent does, and the hardening is in effect (seccomp, no new privileges, cgroup limits);
  the database URL reaches the agent through the 0600 EnvironmentFile;
- an event fired through the installed hook command is drained and ingested by the service;
- ``kill -9`` → ``Restart=on-failure``; SIGSTOP → the watchdog restarts it (a short WatchdogSec in
  a test drop-in; the shipped unit keeps its own);
- one whole cycle on the real CLI's sessions: ``systemctl --user stop`` during SFT checkpoints and
  exits well within TimeoutStopSec, the next start resumes that run without redoing its finished
  optimizer steps, and the cycle ends with an exported model version, judged by the gate, that
  ``ccrl status``, ``ccrl runs list`` and ``ccrl models list`` show;
- the README's log command finds the agent's entries and ``-p warning`` only warnings and worse;
- ``ccrl doctor`` reports on the running service.

The drop-in also sets RestartSec=1 (the shipped 30 s would only make the test wait).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ccrl.agent.daemon.service import STOP_TIMEOUT_SEC, UNIT_NAME, journal_args
from conftest import HOOK_PAYLOADS, embedded_tokenizer_dir  # noqa: F401  (the tokenizer cache the models need)
from e2e import scenarios as sc
from e2e.harness import SCRIPTS_DIR, ClaudeCodeMissing, Sandbox, claude_version, find_claude
from e2e.scripted_api import ScriptedAPI
from export_helpers import converter_cache, overfit_model
from systemd_manager import UserManager, systemd_host  # noqa: F401  (the fixture)

CONCURRENT = 6  # sessions of the real CLI besides the multi-step and retry scenarios: 8 traces
MAX_STEPS = 4


class World:
    """The user (a sandbox with its own HOME), their user manager and the scripted API."""

    def __init__(self, sandbox: Sandbox, manager: UserManager, api: ScriptedAPI) -> None:
        self.sandbox = sandbox
        self.manager = manager
        self.api = api

    @property
    def db(self) -> Path:
        return self.sandbox.ccrl_home / "ccrl.db"

    def env(self) -> dict[str, str]:
        """The user's environment: the sandbox's, with the runtime dir where their manager listens."""
        return {**self.sandbox.env(), "XDG_RUNTIME_DIR": str(self.manager.runtime),
                # Exported in the user's shell: `ccrl service install` carries it in the EnvironmentFile.
                "CCRL_DATABASE_URL": f"sqlite:///{self.db}"}

    def ccrl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(SCRIPTS_DIR / "ccrl"), *args], env=self.env(), capture_output=True, text=True,
                              timeout=300)
        assert not check or done.returncode == 0, f"ccrl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done

    def ccrl_json(self, *args: str) -> Any:
        return json.loads(self.ccrl(*args, "--json").stdout)

    def query(self, sql: str, *params: Any) -> list[tuple]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return []  # not migrated yet
        finally:
            conn.close()

    def show(self, *properties: str) -> dict[str, str]:
        return self.manager.show(UNIT_NAME, *properties)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def cycle(self) -> dict[str, Any] | None:
        rows = self.query("SELECT id, status, step, steps, outcome, sft_run_id, model_version_id, child_pid "
                          "FROM cycles WHERE number = 1")
        if not rows:
            return None
        keys = ("id", "status", "step", "steps", "outcome", "sft_run_id", "model_version_id", "child_pid")
        cycle = dict(zip(keys, rows[0]))
        cycle["steps"] = json.loads(cycle["steps"] or "{}")
        return cycle

    def sft_progress(self) -> int:
        from ccrl.agent.daemon.child import progress_path

        cycle = self.cycle()
        if cycle is None or cycle["step"] != "sft":
            return 0
        try:
            return int(json.loads(progress_path(self.sandbox.ccrl_home, cycle["id"], "sft").read_text()).get("step", 0))
        except (OSError, ValueError):
            return 0

    def write_config(self, **agent: Any) -> None:
        """``~/.config/ccrl/config.toml``, where the README says settings go (the unit reads it)."""
        values = {"ingest_interval_seconds": 0.5, "cycle_check_interval_seconds": 1, "min_traces_for_sft": 1000,
                  "auto_export_gguf": True, "child_stop_timeout_seconds": 40, "retry_backoff_seconds": 1, **agent}
        lines = ["[agent]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
        lines += ["[train]", f'base_model = "{self.base_model}"', f"max_steps = {MAX_STEPS}", "batch_size = 1",
                  "gradient_accumulation_steps = 1", "max_length = 512",
                  # Barely moves the weights: the tiny model keeps ending its turn, so export verifies it.
                  "learning_rate = 1e-7",
                  # The scripted sessions think in short sentences: keep them all in the dataset.
                  "[dataset]", "min_reasoning_chars = 0", "min_reasoning_steps = 0", "min_tool_calls = 1",
                  "[eval]", "max_decisions = 6", "max_plans = 1", "decision_max_new_tokens = 8",
                  "plan_max_new_tokens = 16", "threads = 1"]
        path = self.sandbox.home / ".config" / "ccrl" / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")

    base_model: Path


@pytest.fixture(scope="module")
def world(systemd_host, tmp_path_factory, run_shared_dir):  # noqa: F811
    try:
        claude = find_claude()
        claude_version(claude)
    except ClaudeCodeMissing as exc:
        pytest.fail(f"{exc} These tests never skip for it.", pytrace=False)
    models = run_shared_dir("export-shared")  # test_export and test_deploy build the same model there
    base = overfit_model(models)
    from ccrl.trainers.export import converter_dir

    converter = converter_dir(converter_cache())
    with ScriptedAPI() as api:
        sandbox = Sandbox(tmp_path_factory.mktemp("user"), api, claude)
        with systemd_host.manager(home=sandbox.home) as manager:
            world = World(sandbox, manager, api)
            world.base_model = base
            world.write_config()
            # The service's export would fetch llama.cpp's converter once; the tests have it already.
            cache = sandbox.ccrl_home / "cache"
            cache.mkdir(parents=True, mode=0o700)
            (cache / converter.name).symlink_to(converter)
            yield world


def drop_in(world: World, name: str, text: str | None) -> None:
    """A test-only drop-in for the unit (None removes it), then daemon-reload."""
    folder = world.sandbox.home / ".config" / "systemd" / "user" / f"{UNIT_NAME}.d"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.conf"
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(text)
    world.manager.systemctl("daemon-reload")


def restarted(world: World, old_pid: int, timeout: float = 120) -> int:
    """Wait until another main process runs and has sent READY and a status line."""
    def fresh() -> int | None:
        props = world.show("MainPID", "ActiveState", "SubState", "StatusText")
        pid = int(props["MainPID"] or 0)
        ok = pid and pid != old_pid and props["ActiveState"] == "active" and props["StatusText"]
        return pid if ok else None

    return world.manager.wait_for("the agent to come back", fresh, timeout)


def test_install_and_start_return_after_ready_with_the_hardening_in_effect(world):
    report = world.ccrl_json("service", "install", "--no-start", "--memory-high", "5G", "--memory-max", "6G")
    assert report["enabled"] is True and report["environment_file"]
    unit = Path(report["unit"])
    assert str(world.db) not in unit.read_text() and str(world.db) in Path(report["environment_file"]).read_text()
    drop_in(world, "test-timings", "[Service]\nRestartSec=1\n"
                                   "Environment=OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false\n")

    started = time.monotonic()
    world.manager.systemctl("start", "ccrl-agent")
    took = time.monotonic() - started
    # Type=notify: the start job finished only when READY=1 arrived, and the status came from the agent.
    props = world.show("Type", "ActiveState", "SubState", "StatusText", "MainPID")
    assert props["Type"] == "notify" and (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["StatusText"].startswith(("started:", "idle:")), props
    assert took > 0.2  # a Python start, not a fork: systemctl waited for READY
    idle = world.manager.wait_for("the agent's idle status", lambda: world.show("StatusText")["StatusText"]
                                  .startswith("idle: 0/1000"), 60)
    assert idle
    pid = int(props["MainPID"])
    status = world.ccrl_json("service", "status")
    assert status["active"] == "active (running)" and status["main_pid"] == pid and status["up_to_date"]
    assert status["agent"] == {"running": True, "pid": pid}

    # The database URL came through the EnvironmentFile.
    environ = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
    assert environ["CCRL_DATABASE_URL"] == f"sqlite:///{world.db}" and environ["NOTIFY_SOCKET"]
    # Hardening, as the manager set it and as the kernel enforces it on the running agent.
    shown = world.show("NoNewPrivileges", "RestrictNamespaces", "KeyringMode", "SystemCallErrorNumber",
                       "SystemCallFilter", "TasksMax", "MemoryHigh", "MemoryMax", "UMask")
    assert shown["NoNewPrivileges"] == "yes" and shown["KeyringMode"] == "private" and shown["UMask"] == "0077"
    assert shown["RestrictNamespaces"] == "yes" and shown["SystemCallErrorNumber"] in ("1", "EPERM")
    assert "read" in shown["SystemCallFilter"] and "reboot" not in shown["SystemCallFilter"].split()
    assert (shown["TasksMax"], shown["MemoryHigh"], shown["MemoryMax"]) == ("4096", str(5 * 1024**3), str(6 * 1024**3))
    proc_status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if ":\t" in line)
    assert proc_status["Seccomp"].strip() == "2" and proc_status["NoNewPrivs"].strip() == "1"
    assert int(proc_status.get("Seccomp_filters", "1")) >= 1
    # The exposure score the README gives is the one systemd computes for the installed unit.
    analyze = subprocess.run(["systemd-analyze", "security", "--user", "--no-pager", "ccrl-agent"],
                             env=world.manager.env(), capture_output=True, text=True, timeout=120)
    score = re.search(r"Overall exposure level for ccrl-agent.service: (\d+\.\d)", analyze.stdout)
    assert score, analyze.stdout + analyze.stderr
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"before, {score.group(1)}" in " ".join(readme.split()), score.group(0)
    v2 = world.manager.cgroup_dir(UNIT_NAME)
    if (v2 / "memory.max").exists():  # cgroup v2
        assert (v2 / "pids.max").read_text().strip() == "4096"
        assert (v2 / "memory.max").read_text().strip() == str(6 * 1024**3)
        assert (v2 / "memory.high").read_text().strip() == str(5 * 1024**3)
    else:  # cgroup v1 controllers (this machine): MemoryHigh has no v1 equivalent
        assert (world.manager.cgroup_dir(UNIT_NAME, "pids") / "pids.max").read_text().strip() == "4096"
        v1_memory = world.manager.cgroup_dir(UNIT_NAME, "memory")
        assert (v1_memory / "memory.limit_in_bytes").read_text().strip() == str(6 * 1024**3)
        assert not (v1_memory / "memory.high").exists()


def test_the_environment_file_keeps_any_password_intact(world):
    """What ``ccrl service install`` writes is read back by systemd's own parser unchanged."""
    from ccrl.agent.daemon.service import render_env_file

    password = "p@ss 'w\"o`rd $HOME \\n %h ;#"
    url = f"postgresql+psycopg://ccrl:{password}@db.example.org/ccrl"
    env_file = world.sandbox.root / "check.env"
    env_file.write_text(render_env_file({"CCRL_DATABASE_URL": url}))
    out = world.sandbox.root / "check.out"
    unit = world.sandbox.home / ".config" / "systemd" / "user" / "ccrl-envcheck.service"
    unit.write_text(f"[Service]\nType=oneshot\nEnvironmentFile={env_file}\n"
                    f"ExecStart=/bin/sh -c 'printf %%s \"$$CCRL_DATABASE_URL\" > {out}'\n")
    try:
        world.manager.systemctl("daemon-reload")
        world.manager.systemctl("start", "ccrl-envcheck")
        assert out.read_text() == url
    finally:
        unit.unlink()
        world.manager.systemctl("daemon-reload")


def test_an_event_from_the_installed_hook_is_drained_by_the_service(world):
    world.ccrl("hooks", "install", "--scope", "user")
    command = world.ccrl("hooks", "command").stdout.strip()
    payload = json.loads((HOOK_PAYLOADS / "seeknal_2026-02" / "user_prompt_submit.json").read_text())[0]
    session = f"systemd-{secrets.token_hex(6)}"
    payload |= {"session_id": session, "cwd": str(world.sandbox.root)}
    fired = subprocess.run(["sh", "-c", command], input=json.dumps(payload), env=world.env(),
                           capture_output=True, text=True, timeout=60)
    assert (fired.returncode, fired.stdout, fired.stderr) == (0, "", "")
    stored = world.manager.wait_for("the service to ingest the event", lambda: world.query(
        "SELECT event FROM hook_events WHERE session_id = ?", session), 60)
    assert stored == [("UserPromptSubmit",)]
    pending = world.ccrl_json("status")["pending"]
    assert pending["inbox"] == 0 and pending["spool"] == 0


def test_kill_9_restarts_the_agent(world):
    pid = world.main_pid()
    before = int(world.show("NRestarts")["NRestarts"])
    os.kill(pid, signal.SIGKILL)
    new = restarted(world, pid)
    assert new != pid and int(world.show("NRestarts")["NRestarts"]) == before + 1


def test_a_hung_agent_is_restarted_by_the_watchdog(world):
    drop_in(world, "test-watchdog", "[Service]\nWatchdogSec=4\n")
    try:
        world.manager.systemctl("restart", "ccrl-agent")
        pid = world.main_pid()
        assert world.show("WatchdogUSec")["WatchdogUSec"] in ("4s", "4000000")
        os.kill(pid, signal.SIGSTOP)  # alive, but answering nothing: no more WATCHDOG=1
        new = restarted(world, pid, timeout=90)
        assert new != pid
        timeouts = [e for e in world.manager.journal(*journal_args()) if "Watchdog timeout" in str(e.get("MESSAGE"))]
        assert timeouts, "the manager logs the watchdog's kill"
    finally:
        drop_in(world, "test-watchdog", None)
    world.manager.systemctl("restart", "ccrl-agent")
    assert world.show("WatchdogUSec")["WatchdogUSec"] in ("2min", "120000000")


def test_a_whole_cycle_on_real_sessions_survives_a_stop_during_sft(world):
    api, sandbox = world.api, world.sandbox
    world.ccrl("hooks", "install", "--scope", "user")  # as the README has it (a no-op when installed)
    shared = sandbox.project("concurrent")
    projects = [sandbox.project("multi-step"), sandbox.project("retry"), *[shared] * CONCURRENT]
    cases = [sc.multi_step(projects[0]), sc.failed_then_retry(projects[1]),
             *(sc.concurrent(shared, i) for i in range(CONCURRENT))]
    world.write_config(min_traces_for_sft=len(cases), traces_per_training_cycle=len(cases))
    world.manager.systemctl("restart", "ccrl-agent")  # the agent reads its settings at start
    runs = []
    for case, project in zip(cases, projects):
        key = api.add_script(f"{case.name}-{secrets.token_hex(4)}", case.script)
        runs.append(sandbox.start_claude(case.prompt_for(key), project))
    for run in runs:
        run.wait().check()
    assert not api.errors, api.errors

    # The events reach the service, which crosses the threshold and starts SFT on its own.
    world.manager.wait_for("SFT to finish an optimizer step", lambda: world.sft_progress() >= 1, 900, interval=0.5)
    assert world.show("StatusText")["StatusText"].startswith("cycle 1: SFT")
    stopping = time.monotonic()
    world.manager.systemctl("stop", "ccrl-agent", timeout=STOP_TIMEOUT_SEC + 60)
    stop_took = time.monotonic() - stopping
    stopped = world.show("ActiveState", "Result")
    assert stopped == {"ActiveState": "inactive", "Result": "success"}, stopped  # not killed at the timeout
    assert stop_took < STOP_TIMEOUT_SEC
    cycle = world.cycle()
    assert cycle["steps"]["sft"]["status"] == "pending" and cycle["steps"]["sft"]["attempts"] == 0
    [(run_id, run_status, output_dir)] = world.query("SELECT id, status, output_dir FROM training_runs")
    assert run_status == "interrupted"
    checkpoints = sorted(int(p.name.split("-")[1]) for p in Path(output_dir).glob("checkpoint-*"))
    assert checkpoints and 1 <= checkpoints[-1] <= MAX_STEPS
    dataset_done = cycle["steps"]["dataset"]["finished_at"]

    world.manager.systemctl("start", "ccrl-agent")
    done = world.manager.wait_for("cycle 1 to finish", lambda: (c := world.cycle()) and c["status"] == "completed"
                                  and c, 900, interval=1)
    assert done["steps"]["dataset"]["finished_at"] == dataset_done  # not rebuilt
    [(same_id, status, metrics)] = world.query("SELECT id, status, metrics FROM training_runs")
    metrics = json.loads(metrics)
    assert (same_id, status) == (run_id, "completed")  # the same run, resumed
    assert metrics["resumed_from"] == f"checkpoint-{checkpoints[-1]}" and metrics["global_step"] == MAX_STEPS
    # Exported, verified in llama.cpp and recorded as a candidate version; then judged for real
    # against the base model and the learn-nothing baselines (the tiny model rarely beats the
    # bigram baseline: then the gate rejects it, and the version and cycle say so).
    assert done["steps"]["export"]["status"] == "done" and done["model_version_id"]
    gate = done["steps"]["evaluate"]
    assert gate["status"] == "done" and gate["result"]["checks"]
    [(number, version_status)] = world.query("SELECT number, status FROM model_versions")
    expected = "candidate" if gate["result"]["passed"] else "rejected"
    assert version_status == expected and done["outcome"] == expected

    # What the user reads.
    status = world.ccrl("status").stdout
    for text in ("running", f"run {run_id}", "sft (cycle 1) completed", "dataset v1"):
        assert text in status, (text, status)
    listed = world.ccrl_json("runs", "list")
    [cycle_listed] = listed["cycles"]
    assert (cycle_listed["number"], cycle_listed["outcome"], cycle_listed["runs"]) == (1, done["outcome"], [run_id])
    assert cycle_listed["model_version_number"] == number and cycle_listed["dataset_version_number"] == 1
    assert [(r["id"], r["status"]) for r in listed["runs"]] == [(run_id, "completed")]
    table = world.ccrl("runs", "list").stdout
    assert "Cycles" in table and "Training runs" in table and done["outcome"] in table and f"v{number}" in table
    models = world.ccrl_json("models", "list")
    assert [(m["number"], m["status"]) for m in models] == [(number, expected)]


def test_the_readme_log_command_and_its_priority_filter(world):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"journalctl {' '.join(journal_args(0))}" in readme and f"journalctl {' '.join(journal_args(1000))}" in readme
    entries = world.manager.journal(*journal_args())
    messages = [str(e.get("MESSAGE")) for e in entries]
    assert any(m.startswith("agent started") for m in messages) and any("cycle finished" in m for m in messages)
    warnings = world.manager.journal(*journal_args(), "-p", "warning")
    assert warnings and all(int(e["PRIORITY"]) <= 4 for e in warnings)
    assert any("step interrupted; it resumes when the agent runs again" in str(e.get("MESSAGE")) for e in warnings)
    assert not any(str(e.get("MESSAGE")).startswith("agent started") for e in warnings)
    # As root, the user manager's units log into the system journal: `--user` finds no journal of
    # root's own, so the README gives root `--user-unit`.
    as_user = subprocess.run(["journalctl", "--no-pager", "--user", "-u", "ccrl-agent"], env=world.manager.env(),
                             capture_output=True, text=True, timeout=60)
    assert "agent started" not in as_user.stdout


def test_doctor_reports_on_the_running_service(world):
    report = json.loads(world.ccrl("doctor", "--json", check=False).stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["agent service"]["level"] == "ok"
    assert checks["service state"]["level"] == "ok" and "active (running)" in checks["service state"]["detail"]
    assert checks["service status"]["level"] == "ok" and "status: idle:" in checks["service status"]["detail"]
    assert checks["last cycle"]["level"] == "ok" and checks["last cycle"]["detail"].startswith("cycle 1 completed")
    # The watchdog's kill earlier today is an error in the journal: named, with the command to read more.
    journal = checks["journal"]
    assert journal["level"] == "warning" and "from the agent in the last 24 hours" in journal["detail"]
    assert journal["fix"] == f"journalctl {' '.join(journal_args())} -p err --since -24h"

    # A unit that keeps failing: the doctor says why and what to do.
    drop_in(world, "test-broken", "[Service]\nExecStart=\nExecStart=/bin/false\nRestart=no\n")
    try:
        world.manager.systemctl("restart", "ccrl-agent", check=False)
        world.manager.wait_for("the unit to fail", lambda: world.show("ActiveState")["ActiveState"] == "failed", 60)
        report = json.loads(world.ccrl("doctor", "--json", check=False).stdout)
        state = {c["name"]: c for c in report["checks"]}["service state"]
        assert state["level"] == "error" and "exited with an error" in state["detail"]
        assert "reset-failed ccrl-agent" in state["fix"] and report["status"] == "error"
    finally:
        drop_in(world, "test-broken", None)
        world.manager.systemctl("reset-failed", "ccrl-agent", check=False)
