"""Fixtures for the end-to-end tests with the real Claude Code CLI (see harness.py).

A missing CLI is a failure, not a skip: CI installs it with ``make setup``, and without the real
CLI these tests could not check capture at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import ClaudeCodeMissing, Sandbox, claude_version, find_claude
from .scripted_api import ScriptedAPI


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
