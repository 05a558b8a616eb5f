"""``ccrl config show``: effective values and their source (default, config file, environment)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ccrl.agent.cli import app
from ccrl.agent.config import Settings

runner = CliRunner()


def _show(env: dict[str, str] | None = None) -> dict:
    result = runner.invoke(app, ["config", "show", "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_defaults_are_the_original_design(ccrl_home):
    report = _show()
    rows = report["settings"]
    expected = {
        "agent.min_traces_for_sft": 50,
        "agent.traces_per_training_cycle": 50,
        "agent.sft_frequency": 1,
        "agent.ppo_frequency": 2,
        "agent.auto_export_gguf": True,
        "agent.auto_deploy_ollama": False,
        "agent.keep_model_versions": 3,
        "train.lora_r": 16,
        "train.learning_rate": 2e-4,
        "train.num_epochs": 3,
        "train.batch_size": 2,
        "train.num_episodes": 100,
        "reward.constraint": 0.25,
        "reward.reasoning": 0.20,
        "reward.tool_efficiency": 0.20,
        "reward.self_correction": 0.15,
        "reward.exploration": 0.20,
    }
    for key, value in expected.items():
        assert rows[key]["value"] == value, key
        assert rows[key]["source"] == "default", key
    assert rows["home"] == {**rows["home"], "value": str(ccrl_home), "source": "environment", "env": "CCRL_HOME"}
    assert report["config_file_exists"] is False


def test_file_and_environment_sources_merge_per_key(ccrl_home, tmp_path, monkeypatch):
    cfg = tmp_path / "xdg-config" / "ccrl" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        "tool_output_max_chars = 500\n"
        "[agent]\nmin_traces_for_sft = 10\nppo_frequency = 3\nmin_trace_for_sft = 1\n"
        "[reward]\nconstraint = 0.4\n"
    )
    monkeypatch.setenv("CCRL_AGENT__PPO_FREQUENCY", "4")
    monkeypatch.setenv("CCRL_AGENT__AUTO_DEPLOY_OLLAMA", "true")
    monkeypatch.setenv("CCRL_TRAIN__LORA_RANK", "8")
    report = _show()
    rows = report["settings"]
    assert report["config_file"] == str(cfg) and report["config_file_exists"]
    assert rows["tool_output_max_chars"] == {**rows["tool_output_max_chars"], "value": 500, "source": "config file"}
    assert (rows["agent.min_traces_for_sft"]["value"], rows["agent.min_traces_for_sft"]["source"]) == (10, "config file")
    # The environment beats the file for the same key, and leaves the file's other keys alone.
    assert (rows["agent.ppo_frequency"]["value"], rows["agent.ppo_frequency"]["source"]) == (4, "environment")
    assert rows["agent.ppo_frequency"]["env"] == "CCRL_AGENT__PPO_FREQUENCY"
    assert (rows["agent.auto_deploy_ollama"]["value"], rows["agent.auto_deploy_ollama"]["source"]) == (True, "environment")
    assert (rows["reward.constraint"]["value"], rows["reward.constraint"]["source"]) == (0.4, "config file")
    assert rows["reward.reasoning"]["source"] == "default"
    # Typos are reported, not silently ignored.
    assert report["unknown_file_keys"] == ["agent.min_trace_for_sft"]
    assert report["unknown_env"] == ["CCRL_TRAIN__LORA_RANK"]
    # The report agrees with what the code reads.
    settings = Settings()
    assert settings.agent.ppo_frequency == 4 and settings.agent.min_traces_for_sft == 10
    table = runner.invoke(app, ["config", "show"])
    assert table.exit_code == 0
    assert "agent.ppo_frequency" in table.stdout and "environment" in table.stdout
    assert "unknown key 'agent.min_trace_for_sft'" in table.stderr


def test_invalid_values_are_a_clear_error(ccrl_home, tmp_path, monkeypatch):
    monkeypatch.setenv("CCRL_AGENT__MIN_TRACES_FOR_SFT", "lots")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "agent.min_traces_for_sft" in result.stderr and "Traceback" not in result.output
    monkeypatch.delenv("CCRL_AGENT__MIN_TRACES_FOR_SFT")
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[agent\n")
    monkeypatch.setenv("CCRL_CONFIG", str(cfg))
    result = runner.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 2
    assert f"config file {cfg} is not valid TOML" in " ".join(result.stderr.split())
