"""Shared test fixtures: an isolated data directory per test, and the shared fixture files."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Genuine Claude Code transcripts and hook payloads, read in place (never copied here).
FIXTURES = Path(os.environ.get("CCRL_FIXTURES", REPO.parent / "shared" / "fixtures" / "claude-code"))
TRANSCRIPTS = FIXTURES / "transcripts"
HOOK_PAYLOADS = FIXTURES / "hook_payloads"
# What tests build once per machine and reuse (git-ignored): the GGUF converter, the tokenizer.
TEST_CACHE = Path(os.environ.get("CCRL_TEST_CACHE", REPO / ".cache" / "tests"))


def embedded_tokenizer_dir() -> Path:
    """The embedded default's (SmolLM2) tokenizer with the ChatML training template, for the tiny
    test models: converted from its GGUF once per machine into the test cache, by a child process
    (reading the GGUF takes ~20 s and leaves a million small arrays behind that slow down every
    later garbage collection of the process that read it)."""
    from ccrl.trainers.base_models import EMBEDDED_DEFAULT, ensure_embedded_tokenizer

    base = TEST_CACHE / "base"
    if not any((base / name / "tokenizer_config.json").is_file() for name in
               (f"{EMBEDDED_DEFAULT}-tokenizer", EMBEDDED_DEFAULT)):
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from ccrl.trainers.base_models import ensure_embedded_tokenizer as convert; "
                        "convert(Path(sys.argv[1]))", str(base)], check=True)
    return ensure_embedded_tokenizer(base)  # converted: returns at once


@pytest.fixture
def ccrl_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty CCRL_HOME (and XDG dirs) for one test; settings and engines reset."""
    from ccrl.agent.core.config import reset_settings_cache
    from ccrl.agent.store.db import dispose_engines

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


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file): one test process at a time
    builds what is cached there."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def run_shared_dir(tmp_path_factory) -> Callable[[str], Path]:
    """``run_shared_dir(name)``: a folder of this test run that every pytest-xdist worker shares
    (the run's base temp, not the worker's), for models that cost a minute to build and are the
    same for every test. Builders lock it with ``folder_lock``."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent

    def shared(name: str) -> Path:
        root = base / name
        root.mkdir(parents=True, exist_ok=True)
        return root

    return shared


# The slowest files first: pytest-xdist hands out whole files (--dist loadfile) in this order,
# so no worker is left running one long file at the end while the other has nothing to do.
# test_deploy builds the overfit model that test_export reuses: they are apart on purpose.
SLOW_FILES_FIRST = ("test_demo.py", "test_systemd_real.py", "test_deploy.py", "test_readme_quickstart.py",
                    "test_scheduler.py", "test_sft.py", "test_accelerate.py", "test_gate.py", "test_rl.py",
                    "test_export.py", "test_claude_code_capture.py", "test_eval_sessions.py",
                    "test_purge_derived.py", "test_wheel.py")


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file stays in one piece


@pytest.fixture(autouse=True)
def _logging_as_in_a_new_process():
    """After each test, logging is as a new process has it: a test that ran ``configure_logging``
    in-process (a root handler into structlog, structlog's output stream) must not make a later
    test's library log lines (httpx's, say) appear in that test's captured stdout."""
    yield
    import logging

    import structlog

    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_ToStructlog":
            root.removeHandler(handler)
    structlog.reset_defaults()
