"""Processes paused inside a real migration (the runner's CCRL_TEST_PAUSE_IN_MIGRATION point),
for the crash and concurrent-start tests on SQLite and PostgreSQL."""

from __future__ import annotations

import select
import subprocess


def wait_for_pause(proc: subprocess.Popen, name: str, timeout: float = 120) -> None:
    """Block until ``proc`` says on stderr that it paused inside migration ``name``."""
    ready, _, _ = select.select([proc.stderr], [], [], timeout)
    assert ready, "the migrating process never reached the pause point"
    line = proc.stderr.readline()
    assert f"paused in migration {name}" in line, line + proc.stderr.read()
