"""The README's "Using it for real" block, run as written by a new user: a fresh HOME, the
system's ``python3``, the block's lines read out of README.md (so this test breaks when the README
changes), from the virtual environment up to ``systemctl --user start ccrl-agent`` under a real
user manager (tests/systemd_manager.py). Then the service runs this new installation, and the
installation can train on a CPU (the [train] extra and the embedded default model are there).

pip installs from the machine's own package configuration (its ``PIP_*`` settings), the
repository's wheel cache (``.cache/wheels``, kept by CI) and the pip cache of the user running
the tests, so the install's time stays bounded by local copies, not the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from conftest import TRANSCRIPTS
from systemd_manager import systemd_host  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parent.parent
LAST_LINE = "systemctl --user start ccrl-agent"


def quickstart_lines() -> list[str]:
    """The README's "Using it for real" shell block, up to and including LAST_LINE."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using it for real", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README.md: the 'Using it for real' section has no ```sh block"
    lines = block.group(1).splitlines()
    commands = [line.split("#", 1)[0].strip() for line in lines]
    assert LAST_LINE in commands, f"README.md's block no longer runs `{LAST_LINE}`"
    return lines[: commands.index(LAST_LINE) + 1]


def _pip_cache() -> str:
    if os.environ.get("PIP_CACHE_DIR"):
        return os.environ["PIP_CACHE_DIR"]
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip")


def test_the_readme_block_runs_verbatim_to_a_running_service(systemd_host, tmp_path):  # noqa: F811
    lines = quickstart_lines()
    home = tmp_path / "home"
    # Someone who uses Claude Code: real transcripts where Claude Code keeps them, for `ccrl import`.
    shutil.copytree(TRANSCRIPTS / "agentlogs", home / ".claude" / "projects" / "-work-agentlogs")
    python_dir = Path(shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "/usr/bin/python3").parent
    with systemd_host.manager(home=home) as manager:
        env = manager.env(
            PATH=f"{home}/.local/bin:{python_dir}:/usr/local/bin:/usr/bin:/bin",  # ~/.local/bin as a login adds it
            PIP_CACHE_DIR=_pip_cache(),
            PIP_FIND_LINKS=" ".join(filter(None, [str(REPO / ".cache" / "wheels"), os.environ.get("PIP_FIND_LINKS")])),
            **{k: v for k, v in os.environ.items() if k.startswith("PIP_") and k not in ("PIP_CACHE_DIR", "PIP_FIND_LINKS")},
        )
        script = "set -ex\n" + "\n".join(lines) + "\n"
        ran = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
        assert ran.returncode == 0, f"the README's block failed:\n{ran.stderr[-6000:]}\n{ran.stdout[-3000:]}"
        # The install itself printed no warnings (setuptools deprecations, package data, libraries).
        noise = [line for line in (ran.stdout + ran.stderr).splitlines()
                 if re.search(r"warn|deprecat", line, re.I) and not line.startswith("+")
                 # pip's own note to root (a user never sees it), not about ccrl
                 and "Running pip as the 'root' user" not in line]
        assert not noise, noise
        assert "sessions" in ran.stdout  # `ccrl import` brought the transcripts in, `ccrl status` shows them

        venv = home / ".local" / "share" / "ccrl-venv"
        shown = manager.show("ccrl-agent.service", "ActiveState", "SubState", "StatusText", "ExecStart")
        assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), shown
        assert f"{venv}/bin/ccrl agent run --role all" in shown["ExecStart"] and shown["StatusText"]

        # A CPU-only user can train: the [train] stack and the embedded default model are installed.
        doctor = subprocess.run([str(home / ".local" / "bin" / "ccrl"), "doctor", "--json"], env=env,
                                capture_output=True, text=True, timeout=600)
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["extra [train]"]["level"] == "ok", checks["extra [train]"]
        assert checks["embedded model"]["level"] == "ok", checks["embedded model"]
        assert checks["service state"]["level"] == "ok" and checks["agent service"]["level"] == "ok"
        assert "Failed to load CPU gemm_4bit_forward" not in doctor.stderr


def test_building_the_package_prints_no_warnings(tmp_path):
    """setuptools' own checks (licence metadata, data folders not declared as packages) print
    through pip as warnings; a clean build prints none, and the wheel carries the data files."""
    import sys
    import zipfile

    # The environment's own setuptools (>= 77, as pyproject.toml asks): no isolated build env to fetch.
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                            str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    noise = [line for line in (built.stdout + built.stderr).splitlines()
             if re.search(r"warn|deprecat", line, re.I) and "Running pip as the 'root' user" not in line]
    assert not noise, noise
    [wheel] = tmp_path.glob("ccrl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("ccrl/agent/data/samples/manifest.json", "ccrl/trainers/templates/chatml.jinja",
                 "ccrl/trainers/accelerate_configs/fsdp.yaml"):
        assert data in names, data
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
