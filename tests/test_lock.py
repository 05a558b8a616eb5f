"""The pipeline lock shared by the agent and the manual commands, across real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ccrl.agent.core.lock import INHERITED_FD_ENV, LockBusy, agent_lock, manual_command, pipeline_lock

HOLD_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ccrl.agent.core.lock import pipeline_lock
    lock = pipeline_lock(Path(sys.argv[1]))
    lock.acquire("cycle 3: sft", agent=True, cycle=3)
    print("held", flush=True)
    time.sleep(60)
    """
)


def _holder_process(home):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(home)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_with_who_holds_it(tmp_path):
    proc = _holder_process(tmp_path)
    try:
        lock = pipeline_lock(tmp_path)
        with pytest.raises(LockBusy) as busy:
            lock.acquire("ccrl train --phase sft")
        assert busy.value.holder["pid"] == proc.pid
        assert busy.value.holder["cycle"] == 3
        assert "the agent is busy with cycle 3: sft" in str(busy.value)
        assert f"pid {proc.pid}" in str(busy.value)
        assert pipeline_lock(tmp_path).holder()["what"] == "cycle 3: sft"
    finally:
        proc.kill()
        proc.wait()


def test_kill_9_of_the_holder_frees_the_lock(tmp_path):
    proc = _holder_process(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = pipeline_lock(tmp_path)
    assert lock.holder() is None
    with lock.hold("ccrl export"):
        assert lock.held
        assert pipeline_lock(tmp_path).holder()["what"] == "ccrl export"
    assert lock.holder() is None


def test_waiting_command_gets_the_lock_when_the_holder_ends(tmp_path, capfd):
    proc = _holder_process(tmp_path)
    try:
        with pytest.raises(LockBusy):
            with manual_command("ccrl deploy", wait=True, timeout=0.5, home=tmp_path):
                pass
        assert "the agent is busy with cycle 3: sft" in capfd.readouterr().err
        # Let the holder go in a moment; the waiting command then gets the lock.
        killer = subprocess.Popen([sys.executable, "-c", f"import os,time; time.sleep(0.5); os.kill({proc.pid}, 9)"])
        start = time.monotonic()
        with manual_command("ccrl deploy", wait=True, timeout=30, home=tmp_path) as lock:
            assert lock.held
        assert time.monotonic() - start < 30
        killer.wait()
    finally:
        proc.kill()
        proc.wait()


def test_reentrant_and_inherited_by_a_child(tmp_path):
    lock = pipeline_lock(tmp_path)
    lock.acquire("cycle 1: dataset", agent=True)
    lock.acquire("cycle 1: dataset (nested)")
    lock.release()
    assert lock.held
    lock.update("cycle 1: sft", step="sft")
    assert lock.holder()["what"] == "cycle 1: sft"
    child = textwrap.dedent(
        f"""
        from pathlib import Path
        from ccrl.agent.core.lock import pipeline_lock, LockBusy
        # Without the inherited descriptor, the child is refused like anyone else...
        import os
        fd = os.environ.pop("{INHERITED_FD_ENV}")
        try:
            pipeline_lock(Path({str(tmp_path)!r})).acquire("x")
            raise SystemExit("acquired a held lock")
        except LockBusy:
            pass
        # ...with it, its own acquire is a no-op (the parent's lock covers it).
        os.environ["{INHERITED_FD_ENV}"] = fd
        inner = pipeline_lock(Path({str(tmp_path)!r}))
        inner.acquire("sft inside the child")
        assert inner.held
        inner.release()
        print("ok")
        """
    )
    env = {**os.environ, INHERITED_FD_ENV: str(lock.fd)}
    out = subprocess.run([sys.executable, "-c", child], env=env, pass_fds=[lock.fd],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    lock.release()
    assert not lock.held and lock.holder() is None


def test_agent_lock_tells_whether_an_agent_runs(tmp_path):
    assert agent_lock(tmp_path).holder() is None
    running = agent_lock(tmp_path)
    running.acquire("ccrl agent run", agent=True)
    assert agent_lock(tmp_path).holder()["pid"] == os.getpid()
    with pytest.raises(LockBusy):
        agent_lock(tmp_path).acquire("second agent")
    running.release()
    assert agent_lock(tmp_path).holder() is None
    assert oct(os.stat(tmp_path / "agent.lock").st_mode & 0o777) == "0o600"
