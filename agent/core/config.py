"""Settings: defaults < TOML config file < ``CCRL_*`` environment variables.

The config file is ``$XDG_CONFIG_HOME/ccrl/config.toml`` (``~/.config/ccrl/config.toml``), or
the path in ``CCRL_CONFIG``. Key names follow the original design where it named them.

Sections of the file are nested models here (``[agent]`` → ``Settings.agent``); their
environment overrides join section and key with a double underscore:
``CCRL_AGENT__MIN_TRACES_FOR_SFT=10``, ``CCRL_REWARD__CONSTRAINT=0.3``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ccrl.agent.core.dataset_config import DatasetSettings
from ccrl.agent.core.eval_config import EvalSettings
from ccrl.hooks import paths


def config_file() -> Path:
    explicit = os.environ.get("CCRL_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(xdg) / "ccrl" / "config.toml"


class AgentSettings(BaseModel):
    """``[agent]``: when the always-on agent trains, and what it does with the result."""

    min_traces_for_sft: int = Field(default=50, ge=1, description="Usable traces (after the dataset filters) before the first cycle.")
    traces_per_training_cycle: int = Field(default=50, ge=1, description="New usable traces that start each later cycle.")
    sft_frequency: int = Field(default=1, ge=0, description="SFT every Nth cycle (0 = never).")
    ppo_frequency: int = Field(default=2, ge=0, description="RL phase (GRPO) every Nth cycle (0 = never).")
    auto_export_gguf: bool = Field(default=True, description="Export each trained model to GGUF as part of the cycle.")
    auto_deploy_ollama: bool = Field(default=False, description="Deploy a model that passes the evaluation gate; off = it stays a candidate for `ccrl deploy`.")
    keep_model_versions: int = Field(default=3, ge=1, description="Model versions whose files are kept.")
    ingest_interval_seconds: float = Field(default=5.0, gt=0, description="How often the agent ingests captured events.")
    cycle_check_interval_seconds: float = Field(default=180.0, gt=0, description="How often the agent checks the thresholds and advances the cycle.")
    max_step_attempts: int = Field(default=3, ge=1, description="Tries per cycle step before the cycle fails and waits for new data.")
    retry_backoff_seconds: float = Field(default=300.0, ge=0, description="Wait before the first retry of a failed step; doubles per try.")
    retry_backoff_max_seconds: float = Field(default=3600.0, ge=0, description="Longest wait between retries.")
    child_stop_timeout_seconds: float = Field(default=60.0, gt=0, description="After SIGTERM, how long a step may take to checkpoint before it is killed.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")


class TrainSettings(BaseModel):
    """``[train]``: the original design's training knobs (the trainers read them)."""

    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    learning_rate: float = Field(default=2e-4, gt=0, description="SFT learning rate.")
    num_epochs: int = Field(default=3, ge=1, description="SFT epochs.")
    batch_size: int = Field(default=2, ge=1, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(
        default=4, ge=1, description="SFT forward passes per optimizer step (effective batch = batch_size x this)."
    )
    max_length: int | None = Field(
        default=None, ge=64,
        description="SFT tokens per sequence (longer ones are cut at the end); empty = 4096 on CUDA, 1024 on a CPU.",
    )
    num_episodes: int = Field(default=100, ge=1, description="RL phase: prompts per run.")
    base_model: str | None = Field(
        default=None,
        description="Base model for the agent's training: a hub id, a local folder or 'smollm2'; empty = automatic.",
    )
    max_steps: int | None = Field(default=None, ge=1, description="Cap on optimizer steps per agent training run; empty = whole epochs.")
    accelerate_config: str | None = Field(
        default=None,
        description="SFT on several GPUs with `accelerate launch`: ddp, fsdp, zero3 (QLoRA-ready configs shipped "
                    "with ccrl) or the path of an accelerate config file; empty = one process.",
    )
    num_processes: int | None = Field(
        default=None, ge=1,
        description="Processes for accelerate_config (one per GPU); empty = every visible GPU.",
    )


class RewardSettings(BaseModel):
    """``[reward]``: weights of the behavioural reward's five components."""

    constraint: float = Field(default=0.25, ge=0, description="Constraint adherence.")
    reasoning: float = Field(default=0.20, ge=0, description="Reasoning depth.")
    tool_efficiency: float = Field(default=0.20, ge=0, description="Tool efficiency.")
    self_correction: float = Field(default=0.15, ge=0, description="Self-correction.")
    exploration: float = Field(default=0.20, ge=0, description="Exploration fit.")


class Settings(BaseSettings):
    """Every setting ccrl reads, with its default. ``ccrl config show`` prints the effective values."""

    model_config = SettingsConfigDict(env_prefix="CCRL_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path(paths.data_home()),
        description="Data directory (database, inbox, spool, datasets, models). Mode 0700.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store; default: the SQLite file ccrl.db in `home`.",
    )
    transcript_root: Path = Field(
        default_factory=lambda: Path.home() / ".claude" / "projects",
        description="Where Claude Code keeps its transcripts (`ccrl import` default).",
    )
    tool_output_max_chars: int = Field(
        default=20_000,
        description="Tool outputs longer than this are truncated (with a marker) when stored.",
    )
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The always-on agent.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Training knobs.")
    reward: RewardSettings = Field(default_factory=RewardSettings, description="Reward weights.")
    dataset: DatasetSettings = Field(default_factory=DatasetSettings, description="Dataset builder filters and split.")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="Offline evaluation and the deployment gate.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return (init_settings, env_settings, toml)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'ccrl.db'}"

    @property
    def inbox_path(self) -> Path:
        return Path(paths.inbox_path(str(self.home)))

    @property
    def spool_dirs(self) -> list[Path]:
        return [Path(p) for p in paths.spool_dirs(str(self.home))]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """Forget cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
