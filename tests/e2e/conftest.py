"""Fixtures for the end-to-end tests with the real Claude Code CLI (see harness.py).

A missing CLI is a failure, not a skip: CI installs it with ``make setup``, and without the real
CLI these tests could not check capture at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import ClaudeCodeMissing, Sandbox, claude_version, find_claude
from .scripted_api import ScriptedAPI


# Seconds per phase of the e2e runs, printed at the end of the test session (measured, never asserted).
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    """Show how long the real CLI runs, ingest and trace reads took."""
    if TIMINGS:
        terminalreporter.section("e2e timings (s)")
        for label, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.2f}  {label}")


@pytest.fixture(scope="session")
def e2e_timings() -> dict[str, float]:
    """Where tests record phase timings for the summary."""
    return TIMINGS


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """The pinned Claude Code binary, checked to start and to match its npm package's version."""
    try:
        binary = find_claude()
        claude_version(binary)
    except ClaudeCodeMissing as exc:
        pytest.fail(f"{exc} The end-to-end tests never skip.", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def scripted_api() -> ScriptedAPI:
    """One scripted Messages API for the whole run (scripts are registered per test)."""
    with ScriptedAPI() as api:
        yield api


@pytest.fixture(scope="session")
def sandbox_factory(tmp_path_factory, scripted_api, claude_bin):
    """Make isolated users: ``sandbox_factory("name")``."""

    def make(name: str) -> Sandbox:
        return Sandbox(tmp_path_factory.mktemp(name), scripted_api, claude_bin)

    return make
