"""Shared test fixtures: an isolated data directory per test, and the shared fixture files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Genuine Claude Code transcripts and hook payloads, read in place (never copied here).
FIXTURES = Path(os.environ.get("CCRL_FIXTURES", REPO.parent / "shared" / "fixtures" / "claude-code"))
TRANSCRIPTS = FIXTURES / "transcripts"
HOOK_PAYLOADS = FIXTURES / "hook_payloads"


@pytest.fixture
def ccrl_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty CCRL_HOME (and XDG dirs) for one test; settings and engines reset."""
    from ccrl.agent.config import reset_settings_cache
    from ccrl.agent.db import dispose_engines

    home = tmp_path / "ccrl-home"
    monkeypatch.setenv("CCRL_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-runtime"))
    monkeypatch.delenv("CCRL_DATABASE_URL", raising=False)
    monkeypatch.delenv("CCRL_DISABLE", raising=False)
    monkeypatch.delenv("CCRL_CONFIG", raising=False)
    reset_settings_cache()
    dispose_engines()
    yield home
    dispose_engines()
    reset_settings_cache()
