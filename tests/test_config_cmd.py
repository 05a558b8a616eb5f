"""``ccrl config show``: effective values and their source (default, config file, environment)."""

from __future__ import annotations

import json
from urllib.parse import quote

from typer.testing import CliRunner

from ccrl.agent.cli import app
from ccrl.agent.core.config import Settings

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


SECRET_URL_PASSWORD = "p@ss/w0rd:x%y"


def _no_password(output: str) -> None:
    for form in (SECRET_URL_PASSWORD, quote(SECRET_URL_PASSWORD, safe=""), quote(SECRET_URL_PASSWORD), "w0rd"):
        assert form not in output, form


def test_the_database_password_is_masked_in_text_and_json(ccrl_home, tmp_path, monkeypatch):
    url = f"postgresql+psycopg://ccrl:{quote(SECRET_URL_PASSWORD, safe='')}@db.example:5432/ccrl?sslpassword=k3y"
    monkeypatch.setenv("CCRL_DATABASE_URL", url)
    report = _show()
    assert report["settings"]["database_url"]["value"] == \
        "postgresql+psycopg://ccrl:***@db.example:5432/ccrl?sslpassword=***"
    table = runner.invoke(app, ["config", "show"], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "postgresql+psycopg://ccrl:***@db.example:5432/ccrl" in table.stdout
    for output in (json.dumps(report), table.stdout + table.stderr):
        _no_password(output)
        assert "k3y" not in output
    # From the config file, unencoded (as people write it): the same.
    monkeypatch.delenv("CCRL_DATABASE_URL")
    cfg = tmp_path / "xdg-config" / "ccrl" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'database_url = "redis://:{SECRET_URL_PASSWORD}@cache.example:6379/0"\n')
    report = _show()
    assert report["settings"]["database_url"] == {**report["settings"]["database_url"],
                                                  "value": "redis://:***@cache.example:6379/0", "source": "config file"}
    _no_password(json.dumps(report))


def test_settings_named_as_secrets_are_masked(ccrl_home, monkeypatch):
    """Any setting whose name says password, secret, token or key shows as *** when set (a
    setting added later, e.g. a hub token, needs nothing more)."""
    from pydantic import BaseModel, Field

    import ccrl.agent.cli.config_cmd as config_cmd

    class Hub(BaseModel):
        hub_token: str | None = Field(default=None, description="A token.")
        max_tokens: int = Field(default=512, description="A count, not a secret.")

    class WithSecrets(Settings):
        smtp_password: str | None = Field(default=None, description="A password.")
        api_key: str = Field(default="", description="Unset: shown as it is.")
        hub: Hub = Field(default_factory=Hub, description="A section.")

    monkeypatch.setattr(config_cmd, "Settings", WithSecrets)
    monkeypatch.setenv("CCRL_SMTP_PASSWORD", "correct horse")
    monkeypatch.setenv("CCRL_HUB__HUB_TOKEN", "hf_abcdefghijklmnop")
    report = _show()
    rows = report["settings"]
    assert rows["smtp_password"]["value"] == "***" and rows["smtp_password"]["source"] == "environment"
    assert rows["hub.hub_token"]["value"] == "***" and rows["hub.max_tokens"]["value"] == 512
    assert rows["api_key"]["value"] == ""
    table = runner.invoke(app, ["config", "show"], env={"COLUMNS": "300"})
    for output in (json.dumps(report), table.stdout):
        assert "correct horse" not in output and "hf_abcdefghijklmnop" not in output
