"""Forwarding captured events to a shared PostgreSQL store, on a real server: the hook's local
inbox is the queue, the drain sends it in batches, each event once (its ``event_key``, unique,
``ON CONFLICT DO NOTHING``); while the server is down nothing leaves the inbox, and after it is
back nothing is missing and nothing is doubled. Several capture agents (real ``ccrl agent run
--role capture`` processes) forward into one database while the server crashes and restarts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from postgres_helpers import pg_home, pg_server, pg_url  # noqa: F401  (fixtures)


def _inbox_count(inbox: Path) -> int:
    with sqlite3.connect(inbox) as conn:
        return conn.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]


def _payload(session: str, n: int, cwd: str) -> bytes:
    return json.dumps({"hook_event_name": "UserPromptSubmit", "session_id": session, "cwd": cwd,
                       "prompt": f"prompt {n}", "n": n}).encode()


def test_server_down_keeps_events_local_and_resending_is_harmless(pg_home, pg_server, tmp_path):
    from ccrl.agent.capture.drain import drain, ensure_local_stores
    from ccrl.agent.capture.ingest import ingest
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.daemon.forward import FIRST_BACKOFF_S, Forwarder
    from ccrl.agent.store.db import get_engine
    from ccrl.hooks.inbox import append

    settings = get_settings()
    inbox = ensure_local_stores(settings)
    engine = get_engine(settings)  # migrated while the server is up
    t0 = 1_770_000_000.0
    rows = [(t0 + i / 1000, _payload(f"s{i % 5}", i, str(tmp_path))) for i in range(120)]
    for received_at, payload in rows:
        append(str(inbox), received_at, payload)

    now = [0.0]
    forwarder = Forwarder(settings, ingest=lambda s: ingest(s).as_dict(), clock=lambda: now[0])
    pg_server.stop("fast")
    try:
        assert forwarder.run() is None
        assert forwarder.failures == 1 and "store unreachable" in forwarder.last_error
        assert _inbox_count(inbox) == 120  # nothing left the inbox
        assert not forwarder.due()  # backing off...
        now[0] += FIRST_BACKOFF_S
        assert forwarder.due() and forwarder.run() is None and forwarder.failures == 2
        now[0] += FIRST_BACKOFF_S
        assert not forwarder.due()  # ...for twice as long after a second failure
        now[0] += FIRST_BACKOFF_S
        assert _inbox_count(inbox) == 120
    finally:
        pg_server.start()
        pg_server.wait_ready()
    report = forwarder.run()
    assert report is not None and forwarder.failures == 0 and forwarder.last_error is None
    assert report["drain"]["stored"] == 120 and report["errors"] == []
    assert _inbox_count(inbox) == 0

    # A batch that committed on the server but whose inbox rows were not deleted (the answer
    # was lost) is sent again: every event is recognised, nothing is stored twice.
    for received_at, payload in rows:
        append(str(inbox), received_at, payload)
    again = drain(settings, batch_rows=50)
    assert (again.stored, again.duplicates) == (0, 120)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*), COUNT(DISTINCT event_key) FROM hook_events")).one() == (120, 120)
        ns = sorted(json.loads(p)["n"] for (p,) in conn.execute(text("SELECT payload::text FROM hook_events")))
    assert ns == list(range(120))


WRITER = r"""
import json, os, sys, time
from ccrl.hooks import inbox

homes = json.loads(sys.argv[1]); per_home = int(sys.argv[2]); seconds = float(sys.argv[3])
for n in range(per_home):
    for member, env in homes.items():
        os.environ.update(env)  # this home's spool directories, as its hooks would have
        received_at = round(time.time() * 1_000_000) / 1_000_000
        payload = json.dumps({"hook_event_name": "UserPromptSubmit", "session_id": f"{member}-s{n % 7}",
                              "cwd": env["CCRL_HOME"], "prompt": f"{member} prompt {n}", "member": member,
                              "n": n}).encode()
        try:  # what the hook does: the inbox, else a spool file
            inbox.store(env["CCRL_HOME"], received_at, payload)
        except Exception:
            assert inbox.spool(env["CCRL_HOME"], received_at, payload)
    time.sleep(seconds / per_home)
"""

AGENTS = 4
PER_AGENT = 60


def _pending(home: Path, env: dict[str, str]) -> int:
    spooled = 0
    for directory in (home / "spool", Path(env["XDG_RUNTIME_DIR"]), Path(env["TMPDIR"])):
        if directory.is_dir():
            spooled += sum(1 for p in directory.rglob("*.event"))
    inbox = home / "inbox.db"
    return spooled + (_inbox_count(inbox) if inbox.exists() else 0)


def test_concurrent_capture_agents_survive_a_server_crash(pg_url, pg_server, tmp_path):
    """Four capture agents, each with its own inbox fed by a hook writer, forward into one
    PostgreSQL database; the server crashes (``pg_ctl stop -m immediate``) mid-forward and
    comes back. In the end every event is stored exactly once, with its member and machine."""
    from ccrl.hooks.inbox import ensure_inbox
    from ccrl.hooks.paths import inbox_path

    ccrl = Path(sys.executable).parent / "ccrl"
    envs: dict[str, dict[str, str]] = {}
    for i in range(AGENTS):
        base = tmp_path / f"agent{i}"
        env = {"CCRL_HOME": str(base / "home"), "XDG_RUNTIME_DIR": str(base / "run"),
               "TMPDIR": str(base / "tmp"), "XDG_CONFIG_HOME": str(base / "config"), "HOME": str(base),
               "CCRL_MEMBER": f"member{i}", "CCRL_HOSTNAME": f"laptop{i}"}
        for key in ("CCRL_HOME", "XDG_RUNTIME_DIR", "TMPDIR", "XDG_CONFIG_HOME"):
            Path(env[key]).mkdir(parents=True, mode=0o700)
        ensure_inbox(inbox_path(env["CCRL_HOME"]))
        envs[f"member{i}"] = env
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("CCRL_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    agents = []
    for member, env in envs.items():
        log = open(Path(env["HOME"]) / "agent.log", "w")
        agents.append((subprocess.Popen(
            [str(ccrl), "agent", "run", "--role", "capture"],
            env={**clean, **env, "CCRL_DATABASE_URL": pg_url, "CCRL_AGENT__INGEST_INTERVAL_SECONDS": "0.25"},
            stdout=log, stderr=subprocess.STDOUT), log))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(envs), str(PER_AGENT), "3"],
                              env=clean, stderr=subprocess.PIPE, text=True)
    engine = create_engine(pg_url, pool_pre_ping=True)

    def stored(table: str = "hook_events") -> int:
        try:
            with engine.connect() as conn:
                return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
        except Exception:  # not migrated yet, or the server is down
            return 0

    try:
        deadline = time.monotonic() + 60
        while stored() < AGENTS * PER_AGENT // 4:  # forwarding is well under way
            assert time.monotonic() < deadline, "the agents forwarded nothing"
            assert all(p.poll() is None for p, _ in agents), "an agent exited"
            time.sleep(0.1)
        pg_server.stop("immediate")  # a crash, in the middle of the agents' batches
        engine.dispose()
        time.sleep(1.5)  # the agents meet a dead server meanwhile; the writer goes on
        assert all(p.poll() is None for p, _ in agents), "an agent exited while the server was down"
        pg_server.start()
        pg_server.wait_ready()
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        deadline = time.monotonic() + 60
        while stored() < AGENTS * PER_AGENT or stored("traces") < AGENTS * PER_AGENT or any(_pending(Path(e["CCRL_HOME"]), e) for e in envs.values()):
            assert time.monotonic() < deadline, (stored(), [_pending(Path(e["CCRL_HOME"]), e) for e in envs.values()])
            time.sleep(0.2)
    finally:
        for proc, _ in agents:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc, _ in agents]
        for _, log in agents:
            log.close()
        if writer.poll() is None:
            writer.kill()
    logs = "\n".join((Path(e["HOME"]) / "agent.log").read_text() for e in envs.values())
    assert codes == [0] * AGENTS, logs
    with engine.connect() as conn:
        total, distinct = conn.execute(text("SELECT COUNT(*), COUNT(DISTINCT event_key) FROM hook_events")).one()
        assert (total, distinct) == (AGENTS * PER_AGENT, AGENTS * PER_AGENT)
        rows = conn.execute(text("SELECT user_name, hostname, payload::text FROM hook_events")).all()
        traces = conn.execute(text("SELECT user_name, hostname, COUNT(*) FROM traces GROUP BY 1, 2")).all()
    engine.dispose()
    by_member: dict[str, list[int]] = {}
    for user_name, host, payload in rows:
        data = json.loads(payload)
        assert (user_name, host) == (data["member"], data["member"].replace("member", "laptop"))
        by_member.setdefault(user_name, []).append(data["n"])
    assert {m: sorted(ns) for m, ns in by_member.items()} == {m: list(range(PER_AGENT)) for m in envs}
    # each agent rebuilt its own member's sessions into traces (one per prompt), no one else's
    assert sorted(traces) == sorted((m, m.replace("member", "laptop"), PER_AGENT) for m in envs)
    # the crash was noticed and survived (the agents said so), not missed
    assert "store unreachable" in logs or "reachable again" in logs, logs
    # capture agents forward and ingest, and never run the cycle check (no training)
    for env in envs.values():
        state = json.loads((Path(env["CCRL_HOME"]) / "agent" / "state.json").read_text())
        assert state["role"] == "capture" and "last_ingest_at" in state and "last_cycle_check_at" not in state


def test_trainer_role_runs_cycle_checks_and_leaves_capture_to_others(pg_url, tmp_path):
    """``--role trainer`` (the GPU box) checks thresholds on the pooled traces and never
    ingests: events in its own inbox stay there for a capture agent."""
    from ccrl.hooks.inbox import append, ensure_inbox
    from ccrl.hooks.paths import inbox_path

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    ensure_inbox(inbox_path(str(home)))
    append(inbox_path(str(home)), 1_770_000_000.0, _payload("t-s1", 1, str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCRL_") and k != "NOTIFY_SOCKET"}
    env.update(CCRL_HOME=str(home), CCRL_DATABASE_URL=pg_url, XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_RUNTIME_DIR=str(tmp_path / "run"), TMPDIR=str(tmp_path), CCRL_AGENT__INGEST_INTERVAL_SECONDS="0.1")
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "ccrl"), "agent", "run", "--role", "trainer"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    state_path = home / "agent" / "state.json"
    try:
        deadline = time.monotonic() + 30
        while True:
            state = json.loads(state_path.read_text()) if state_path.exists() else {}
            if "last_cycle_check_at" in state:
                break
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # five ingest intervals: a capture agent would have drained by now
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    assert state["role"] == "trainer" and "last_ingest_at" not in state
    assert _inbox_count(Path(inbox_path(str(home)))) == 1
    engine = create_engine(pg_url)
    with engine.connect() as conn:  # it opened (and migrated) the shared store, stored nothing
        assert conn.execute(text("SELECT COUNT(*) FROM hook_events")).scalar_one() == 0
        assert conn.execute(text("SELECT COUNT(*) FROM cycles")).scalar_one() == 0  # below the threshold
    engine.dispose()


def test_capture_agent_started_while_the_server_is_down_forwards_once_it_is_up(pg_url, pg_server, tmp_path):
    """A laptop that starts offline: the agent keeps running (it does not exit for systemd to
    restart it), the hook's events wait in the inbox, and they are forwarded when the server
    answers again."""
    from ccrl.hooks.inbox import append, ensure_inbox
    from ccrl.hooks.paths import inbox_path

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    inbox = Path(inbox_path(str(home)))
    ensure_inbox(str(inbox))
    for n in range(3):
        append(str(inbox), 1_770_000_000.0 + n, _payload("offline-s1", n, str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCRL_") and k != "NOTIFY_SOCKET"}
    env.update(CCRL_HOME=str(home), CCRL_DATABASE_URL=pg_url, XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_RUNTIME_DIR=str(tmp_path / "run"), TMPDIR=str(tmp_path), CCRL_AGENT__INGEST_INTERVAL_SECONDS="0.2")
    log_path = tmp_path / "agent.log"
    state_path = home / "agent" / "state.json"
    pg_server.stop("fast")
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "ccrl"), "agent", "run", "--role", "capture"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)

        def noticed() -> bool:
            state = json.loads(state_path.read_text()) if state_path.exists() else {}
            return "unreachable" in (state.get("last_error") or "")

        deadline = time.monotonic() + 30
        while not noticed():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert _inbox_count(inbox) == 3
    finally:
        pg_server.start()
        pg_server.wait_ready()
    engine = create_engine(pg_url)
    try:
        deadline = time.monotonic() + 30
        while _inbox_count(inbox):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM hook_events")).scalar_one() == 3
    finally:
        engine.dispose()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    assert "store unreachable at start" in log_path.read_text()


def _start_agent(tmp_path: Path, name: str, pg_url: str, role: str) -> tuple[subprocess.Popen, Path, Path]:
    base = tmp_path / name
    home = base / "home"
    home.mkdir(parents=True, mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCRL_") and k != "NOTIFY_SOCKET"}
    env.update(CCRL_HOME=str(home), CCRL_DATABASE_URL=pg_url, XDG_CONFIG_HOME=str(base / "config"),
               XDG_RUNTIME_DIR=str(base / "run"), TMPDIR=str(base), CCRL_MEMBER=name, CCRL_HOSTNAME=name,
               CCRL_AGENT__INGEST_INTERVAL_SECONDS="0.2", CCRL_AGENT__CYCLE_CHECK_INTERVAL_SECONDS="0.2")
    log_path = base / "agent.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "ccrl"), "agent", "run", "--role", role],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, home, log_path


def _wait_state(proc: subprocess.Popen, home: Path, log_path: Path, key: str, value: str) -> None:
    path = home / "agent" / "state.json"
    deadline = time.monotonic() + 30
    while True:
        try:
            if json.loads(path.read_text()).get(key) == value:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, (path.read_text() if path.exists() else "no state", log_path.read_text())
        time.sleep(0.1)


def test_one_training_agent_per_shared_store_and_failover(pg_url, tmp_path):
    """Every member runs the default role (all) on one shared store: the first agent trains,
    the second only captures (it still forwards its events), and takes over training at its
    next cycle check once the first one stops."""
    from ccrl.hooks.inbox import append, ensure_inbox
    from ccrl.hooks.paths import inbox_path

    first, first_home, first_log = _start_agent(tmp_path, "gpu-box", pg_url, "all")
    second = None
    try:
        _wait_state(first, first_home, first_log, "trainer", "this agent")
        second, second_home, second_log = _start_agent(tmp_path, "laptop", pg_url, "all")
        _wait_state(second, second_home, second_log, "trainer", "another agent (this one only captures)")
        inbox = Path(inbox_path(str(second_home)))
        ensure_inbox(str(inbox))
        append(str(inbox), 1_770_000_000.0, _payload("laptop-s1", 1, str(tmp_path)))
        deadline = time.monotonic() + 30
        while _inbox_count(inbox):  # the agent that does not train still forwards
            assert time.monotonic() < deadline, second_log.read_text()
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, first_log.read_text()
        _wait_state(second, second_home, second_log, "trainer", "this agent")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT user_name, hostname FROM hook_events")).all() == [("laptop", "laptop")]
        assert conn.execute(text("SELECT COUNT(*) FROM cycles")).scalar_one() == 0  # below the threshold
    engine.dispose()
