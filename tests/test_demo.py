"""``ccrl demo``: the shipped sample sessions, the demo folder's safety rules, and the whole loop
end to end as a real ``ccrl demo`` process, with its HTML report opened in a real headless
Chromium.

The end-to-end run uses the ``ci`` profile with the tiny random Llama of the export tests as the
base model (the embedded SmolLM2 would take a quarter of an hour on two cores; the full demo is
run by hand and reported in the README). Every step still runs for real: import of the shipped
transcripts, the dataset build, SFT, GRPO, GGUF export and verification, the deployment gate
with base model and baselines, and the Ollama step against the test suite's Ollama API server.
The tiny model learns nothing in two steps, so the gate refuses it: the demo must then not
register it, and the command it prints instead must work as printed.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from conftest import TRANSCRIPTS
from export_helpers import converter_cache, tiny_base
from ollama_server import OllamaTestServer, build_go_renderer

REPO = Path(__file__).resolve().parent.parent
CCRL = Path(sys.executable).parent / "ccrl"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ---------------------------------------------------------------------------------------------
# The samples
# ---------------------------------------------------------------------------------------------


def test_samples_ship_in_the_package_small_and_safe():
    from ccrl.agent.operations.demo import SAMPLES_ARCHIVE, SAMPLES_MANIFEST

    assert SAMPLES_ARCHIVE.stat().st_size < 1_000_000  # well under a few MB in git and in the wheel
    manifest = json.loads(SAMPLES_MANIFEST.read_text())
    with tarfile.open(SAMPLES_ARCHIVE, "r:xz") as archive:
        members = archive.getmembers()
    files = [m for m in members if m.isfile()]
    assert all(not Path(m.name).is_absolute() and ".." not in Path(m.name).parts for m in members)
    assert all(m.name.endswith(".jsonl") and m.name.startswith("-home-dev-projects-") for m in files)
    assert len(files) == manifest["files"] and manifest["claude_code"].startswith("2.1.")
    assert 60 <= manifest["traces"] <= 120 and manifest["tool_errors"] > 0
    # The packaging rule that ships them (pyproject.toml: the samples folder is a data package);
    # tests/test_wheel.py checks the built wheel holds them.
    import tomllib

    setuptools_table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "ccrl.agent.data.samples" in setuptools_table["packages"]
    assert {"manifest.json", "*.tar.xz"} <= set(setuptools_table["package-data"]["ccrl.agent.data.samples"])


def test_samples_are_real_claude_code_transcripts_without_machine_paths():
    """Read with a minimal scan, not with ccrl's parser: the transcripts hold the real CLI's
    lines (version, request shapes, tool results), paths under /home/dev only, and no secret."""
    from ccrl.agent.operations.demo import SAMPLES_ARCHIVE
    from ccrl.hooks.redact import redact_text

    types: set[str] = set()
    versions: set[str] = set()
    cwds: set[str] = set()
    tool_uses = failed = 0
    with tarfile.open(SAMPLES_ARCHIVE, "r:xz") as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            text = archive.extractfile(member).read().decode()
            assert redact_text(text) == text
            assert "/tmp/" not in text.replace('"/tmp"', "")  # the generation sandbox is gone
            for line in text.splitlines():
                obj = json.loads(line)
                types.add(obj.get("type"))
                if obj.get("version"):
                    versions.add(obj["version"])
                if obj.get("cwd"):
                    cwds.add(obj["cwd"])
                content = (obj.get("message") or {}).get("content")
                for block in content if isinstance(content, list) else []:
                    tool_uses += block.get("type") == "tool_use"
                    failed += block.get("type") == "tool_result" and bool(block.get("is_error"))
    assert {"user", "assistant"} <= types and len(types) > 4  # other line types the importer skips
    assert versions and all(v.startswith("2.1.") for v in versions)
    assert cwds and all(c.startswith("/home/dev/projects/") for c in cwds)
    assert tool_uses > 250 and failed >= 10


# ---------------------------------------------------------------------------------------------
# The demo folder
# ---------------------------------------------------------------------------------------------


def test_the_demo_folder_is_never_the_users_data(tmp_path):
    from ccrl.agent.operations.demo import MARKER, DemoError, check_demo_dir

    home = tmp_path / "share" / "ccrl"
    home.mkdir(parents=True)
    for unsafe in (home, home.parent, tmp_path):
        with pytest.raises(DemoError, match="holds your ccrl data directory"):
            check_demo_dir(unsafe, home)
    other = tmp_path / "projects"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match="not made by `ccrl demo`"):
        check_demo_dir(other, home)
    check_demo_dir(home / "demo", home)  # the default: new
    (home / "demo").mkdir()
    (home / "demo" / "ccrl.db").write_text("")
    (home / "demo" / MARKER).write_text("")
    check_demo_dir(home / "demo", home)  # an earlier demo's folder


def test_reset_keeps_only_the_caches(tmp_path):
    from ccrl.agent.operations.demo import MARKER, reset_demo_dir

    demo = tmp_path / "demo"
    for rel in ("ccrl.db", "models/sft/run-1/final/a", "models/base/smollm2/config.json", "cache/conv/c.py",
                "datasets/v1/x", "pipeline.lock", "report/index.html"):
        (demo / rel).parent.mkdir(parents=True, exist_ok=True)
        (demo / rel).write_text(rel)
    kept = reset_demo_dir(demo)
    left = sorted(str(p.relative_to(demo)) for p in demo.rglob("*") if p.is_file())
    assert left == sorted([MARKER, "cache/conv/c.py", "models/base/smollm2/config.json", "pipeline.lock"])
    assert sorted(kept) == ["cache", "models/base"]
    assert stat.S_IMODE(demo.stat().st_mode) == 0o700


def test_the_demo_environment_points_everything_at_the_demo_folder(tmp_path, monkeypatch):
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.operations.demo import demo_environment

    monkeypatch.setenv("CCRL_HOME", str(tmp_path / "mine"))
    monkeypatch.setenv("CCRL_DATABASE_URL", "sqlite:////nowhere/mine.db")
    monkeypatch.setenv("CCRL_TRAIN__NUM_EPOCHS", "9")
    monkeypatch.setenv("CCRL_DISABLE", "1")
    with demo_environment(tmp_path / "demo") as ignored:
        settings = get_settings()
        assert settings.home == tmp_path / "demo"
        assert settings.db_url == f"sqlite:///{tmp_path / 'demo' / 'ccrl.db'}"
        assert settings.train.num_epochs == 3
        assert "CCRL_DISABLE" not in os.environ
    assert ignored == ["CCRL_DATABASE_URL", "CCRL_DISABLE", "CCRL_TRAIN__NUM_EPOCHS"]
    assert get_settings().home == tmp_path / "mine" and os.environ["CCRL_DISABLE"] == "1"


def test_profiles_name_real_trainer_settings_and_state_the_full_budgets():
    from ccrl.agent.core.config import EvalSettings, TrainSettings
    from ccrl.agent.operations.demo import PROFILES, budgets_table
    from ccrl.trainers.rl import RLConfig
    from ccrl.trainers.sft import SFTRunConfig

    for profile in PROFILES.values():
        SFTRunConfig.from_dict(profile.sft)  # unknown keys would raise
        RLConfig.from_dict(profile.rl)
        TrainSettings(**profile.train)
        EvalSettings(**profile.eval)
    rows = {r["budget"]: r for r in budgets_table(PROFILES["demo"])}
    assert rows["evaluation decisions"]["full"] == EvalSettings().max_decisions
    assert rows["evaluation decisions"]["demo"] == PROFILES["demo"].eval["max_decisions"]
    assert rows["RL prompts"]["full"] == TrainSettings().num_episodes
    assert rows["SFT sequence length"]["full"] == SFTRunConfig().cpu_max_length
    assert (rows["SFT eval examples"]["full"], rows["SFT eval examples"]["demo"]) == \
        ("all", f"at most {PROFILES['demo'].sft['max_eval_examples']}")
    assert (rows["SFT data"]["full"], rows["SFT data"]["demo"]) == ("trajectory + workflow", "trajectory")
    assert (rows["candidate evaluated as"]["full"], rows["candidate evaluated as"]["demo"]) == ("GGUF and HF weights", "GGUF")
    assert rows["RL held-out prompts"]["demo"] == "none (the gate's plans)"
    assert rows["base model"]["demo"] == "SmolLM2-135M-Instruct (embedded)"


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("Debian's chromium is not installed (`apt-get install chromium`; .ci/run does): the demo "
                    "report is checked in a real browser and this test never skips.", pytrace=False)
    return found


def _images_in_browser(page: Path) -> tuple[list[list], bytes]:
    """Open ``page`` in headless Chromium: every <img> as [src, complete, naturalWidth] once the
    page has loaded, and a screenshot of it."""
    probe = page.with_name("_browser_check.html")
    script = ('<script>window.addEventListener("load", () => document.body.setAttribute("data-images", '
              'JSON.stringify([...document.images].map(i => [i.getAttribute("src"), i.complete, i.naturalWidth]))));'
              "</script></body>")
    probe.write_text(page.read_text().replace("</body>", script))
    chromium = _chromium()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180)
    with tempfile.TemporaryDirectory() as profile:
        shot = page.with_name("_screenshot.png")
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2400",
                        f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=180)
    import html
    import re

    found = re.search(r'data-images="([^"]*)"', dom.stdout)
    assert found, f"chromium did not run the page's script: {dom.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1))), shot.read_bytes() if shot.is_file() else b""


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory) -> Path:
    return build_go_renderer(tmp_path_factory.mktemp("go"))


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, tmp_path_factory, go_binary):
    from ccrl.agent.operations.demo import PROFILES
    from ccrl.trainers.export import converter_dir

    # The user's own data: a real store with a real import, which the demo must not touch.
    user_home = tmp_path / "user-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCRL_", "OLLAMA_"))}
    env |= {"CCRL_HOME": str(user_home), "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"), "HOME": str(tmp_path),
            "CCRL_TRAIN__NUM_EPOCHS": "7", "PYTHONWARNINGS": "ignore"}
    subprocess.run([str(CCRL), "import", str(TRANSCRIPTS / "agentlogs")], env=env, check=True, capture_output=True,
                   timeout=300)
    before = _files(user_home)
    assert "ccrl.db" in before

    # The demo folder of an earlier run, holding the GGUF converter (a kept cache: no download).
    demo = user_home / "demo"
    shutil.copytree(converter_dir(converter_cache()), demo / "cache" / converter_dir(converter_cache()).name)
    (demo / ".ccrl-demo").write_text("")
    (demo / "leftover-from-last-run.txt").write_text("x")
    tiny = tiny_base(tmp_path_factory.mktemp("demo-models"))

    with OllamaTestServer(tmp_path / "ollama", go_binary) as ollama:
        out = subprocess.run([str(CCRL), "demo", "--profile", "ci", "--base-model", str(tiny), "--seed", "7", "--json"],
                             env=env | {"OLLAMA_HOST": ollama.host}, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stderr[-4000:]
        result = json.loads(out.stdout)
        steps = {s["key"]: s for s in result["steps"]}

        # Every step ran for real; the tiny model cannot pass the gate, so it was not registered.
        assert [s["key"] for s in result["steps"]] == ["samples", "import", "dataset", "sft", "rl", "export",
                                                       "evaluate", "deploy", "report"]
        assert all(steps[k]["status"] == "done" for k in steps if k != "deploy"), steps
        assert steps["deploy"]["status"] == "not run" and "gate did not pass" in steps["deploy"]["message"]
        assert not (demo / "leftover-from-last-run.txt").exists()
        assert result["environment_ignored"] == ["CCRL_TRAIN__NUM_EPOCHS"]
        assert result["samples"]["traces"] >= 60 and steps["import"]["summary"]["tool_errors"] > 0
        assert steps["dataset"]["summary"]["eval_traces"] > 0 and not steps["dataset"]["summary"]["dropped"]
        assert steps["sft"]["summary"]["base_model"] == str(tiny)
        # The first max_eval_examples held-out conversations, each one or more decision windows.
        assert steps["sft"]["summary"]["eval_examples"] >= PROFILES["ci"].sft["max_eval_examples"]
        assert steps["rl"]["summary"]["global_step"] >= 1
        assert steps["export"]["summary"]["quant"] and Path(steps["export"]["summary"]["gguf"]).is_file()
        gate = result["gate"]
        assert set(gate["subjects"]) >= {"most_frequent", "bigram", "base", "rl-parent", "candidate", "candidate-gguf"}
        # The SFT parent is compared on its plans' reward only: none of its decisions were generated.
        parent = gate["subjects"]["rl-parent"]["metrics"]
        assert parent["next_action"]["n"] == 0 and parent["reward"]["n"] == gate["subjects"]["candidate"]["metrics"]["reward"]["n"] > 0
        assert gate["subjects"]["candidate"]["metrics"]["next_action"]["n"] > 0
        assert gate["passed"] is False and result["deploy"]["registered"] is False
        assert not [r for r in ollama.requests if r[0] == "POST"]  # nothing was sent to Ollama

        # The report's numbers are the recorded evaluations, subject by subject.
        db = sqlite3.connect(demo / "ccrl.db")
        # --seed reached both trainers.
        seeds = {phase: json.loads(config)[phase]["seed"] for phase, config in db.execute("SELECT phase, config FROM training_runs")}
        assert seeds == {"sft": 7, "rl": 7}
        recorded = {subject: json.loads(metrics) for subject, metrics in
                    db.execute("SELECT subject, metrics FROM evaluations")}
        db.close()
        for subject, entry in gate["subjects"].items():
            assert entry["metrics"]["next_action"] == recorded[subject]["next_action"]
        report = Path(result["report"])
        page = report.read_text()
        assert "cc-claude-agent-demo" in page and "gate" in page and "full profile" in page
        assert json.loads((report.parent / "report.json").read_text())["gate"]["reason"] == gate["reason"]

        # The report in a real browser: every picture loads.
        images, screenshot = _images_in_browser(report)
        assert sorted(src for src, _c, _w in images) == ["loss_curve.png", "metrics_table.png", "next_action.png",
                                                          "reward_curve.png"]
        assert all(complete and width > 100 for _src, complete, width in images), images
        assert screenshot.startswith(b"\x89PNG") and len(screenshot) > 20_000

        # The command the demo printed registers the model as cc-claude-agent-demo, as printed.
        command = result["deploy"]["command"]
        assert "--name cc-claude-agent-demo" in command and f"OLLAMA_HOST={ollama.host}" in command
        registered = subprocess.run(command, shell=True, env=env | {"PATH": f"{CCRL.parent}:{env['PATH']}"},
                                    capture_output=True, text=True, timeout=600)
        assert registered.returncode == 0, registered.stderr
        import ollama as client

        names = {m.model for m in client.Client(host=ollama.host).list().models}
        assert names == {"cc-claude-agent-demo:v1", "cc-claude-agent-demo:latest"}

    # The user's data directory is exactly as it was, apart from the demo's own folder.
    after = {k: v for k, v in _files(user_home).items() if not k.startswith("demo/")}
    assert after == before
    assert stat.S_IMODE(demo.stat().st_mode) == 0o700
