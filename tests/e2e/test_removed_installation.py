"""End to end: the real Claude Code CLI keeps working after ccrl's files are gone.

A user installs ccrl's hook (an installation of its own: the hook's files copied, an
interpreter link), then deletes that installation without uninstalling. The settings entry
stays. With today's command every session still runs exactly as scripted; with the command
earlier versions wrote, the same session is blocked (Python exits 2 on a missing script,
which Claude Code reads as "block"), which is why the command is wrapped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

import pytest

from ccrl.agent.capture import claude_settings
from ccrl.hooks import command as hook_commands

from . import scenarios as sc
from .harness import REPO

pytestmark = pytest.mark.slow


def _install_then_remove(sandbox, render, remove: str) -> None:
    """Install ccrl's hook for a copy of ccrl in the sandbox, then delete that copy's checkout
    (``remove="checkout"``: the interpreter stays, as when a source checkout is deleted) or
    the checkout and the virtual environment (``"all"``)."""
    checkout = sandbox.root / "ccrl checkout"
    shutil.copytree(REPO / "hooks", checkout / "hooks", ignore=shutil.ignore_patterns("__pycache__"))
    python = sandbox.root / "venv" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.symlink_to(os.path.realpath(sys.executable))
    command = render(str(python), str(checkout / "hooks" / "capture.py"), str(sandbox.ccrl_home))
    claude_settings.install(sandbox.settings_file, command)
    shutil.rmtree(checkout)
    if remove == "all":
        shutil.rmtree(python.parent.parent)


def _run_multi_step(sandbox, api) -> tuple[object, sc.Scenario, Path]:
    project = sandbox.project("multi-step")
    scenario = sc.multi_step(project)
    key = api.add_script(f"removed-{secrets.token_hex(4)}", scenario.script)
    return sandbox.claude(scenario.prompt_for(key), project), scenario, project


@pytest.mark.parametrize("remove", ["checkout", "all"])
def test_a_removed_installation_does_not_disturb_claude_code(sandbox_factory, scripted_api, remove):
    sandbox = sandbox_factory(f"removed-{remove}")
    _install_then_remove(sandbox, hook_commands.render, remove)

    run, scenario, project = _run_multi_step(sandbox, scripted_api)

    run.check()
    assert run.stdout == (scenario.response + "\n").encode() and run.stderr == b""
    # Every tool call ran, the edit included (a blocking PreToolUse hook would have stopped it).
    assert (project / "app" / "greet.py").read_text() == 'def greet(name):\n    return f"Hello, {name}!"\n'
    assert not sandbox.ccrl_home.exists()  # and nothing was captured anywhere


def test_the_legacy_form_blocks_claude_code_once_removed(sandbox_factory, scripted_api):
    sandbox = sandbox_factory("removed-legacy")
    _install_then_remove(sandbox, hook_commands.render_legacy, "checkout")

    run, scenario, project = _run_multi_step(sandbox, scripted_api)

    assert run.stdout.startswith(b"UserPromptSubmit operation blocked by hook")  # the prompt never reached Claude
    assert b"can't open file" in run.stdout
    assert (project / "app" / "greet.py").read_text() == 'def greet(name):\n    return f"Helo, {name}!"\n'
