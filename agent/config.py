"""Settings: defaults < TOML config file < ``CCRL_*`` environment variables.

The config file is ``$XDG_CONFIG_HOME/ccrl/config.toml`` (``~/.config/ccrl/config.toml``), or
the path in ``CCRL_CONFIG``. Key names follow the original design where it named them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ccrl.hooks import paths


def config_file() -> Path:
    explicit = os.environ.get("CCRL_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(xdg) / "ccrl" / "config.toml"


class Settings(BaseSettings):
    """Every setting ccrl reads, with its default. ``ccrl config show`` prints the effective values."""

    model_config = SettingsConfigDict(env_prefix="CCRL_", extra="ignore")

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
