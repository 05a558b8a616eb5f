"""``ccrl config show [--json]``: every setting's effective value and where it came from.

Sources, strongest first: the environment (``CCRL_KEY``, or ``CCRL_SECTION__KEY`` for keys in a
section such as ``[agent]``), the TOML config file, the default. The provenance is computed with
the same pydantic-settings sources ``Settings`` itself uses, so it cannot disagree with them.
Secrets are masked in both outputs: URL passwords, and any setting whose name says it is a
password, secret, token or key (``ccrl.agent.core.secrets_display``).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource, TomlConfigSettingsSource
from rich.console import Console
from rich.text import Text
from rich.table import Table

from ccrl.agent.core.config import Settings, config_file
from ccrl.agent.core.secrets_display import mask_setting

app = typer.Typer(help="Show ccrl's configuration.", no_args_is_help=True)

_MISSING = object()


def _lookup(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every (key path, description) of ``model``, sections flattened."""
    out: list[tuple[tuple[str, ...], str]] = []
    for name, field in model.model_fields.items():
        section = _section_model(field.annotation)
        if section is not None:
            out += _leaves(section, (*prefix, name))
        else:
            out.append(((*prefix, name), field.description or ""))
    return out


def _unknown_keys(raw: dict[str, Any], model: type[BaseModel], prefix: str = "") -> list[str]:
    """Keys in the config file that no setting reads (typos are silently ignored otherwise)."""
    unknown = []
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if field is None:
            unknown.append(prefix + key)
            continue
        section = _section_model(field.annotation)
        if section is not None and isinstance(value, dict):
            unknown += _unknown_keys(value, section, f"{prefix}{key}.")
    return unknown


def _unknown_env(environ: dict[str, str]) -> list[str]:
    """``CCRL_SECTION__KEY`` variables whose key is not in that section."""
    unknown = []
    for name in environ:
        if not name.startswith("CCRL_") or "__" not in name:
            continue
        section, _, key = name[len("CCRL_"):].lower().partition("__")
        field = Settings.model_fields.get(section)
        model = _section_model(field.annotation) if field else None
        if model is None or key not in model.model_fields:
            unknown.append(name)
    return unknown


def _env_name(path: tuple[str, ...]) -> str:
    return "CCRL_" + "__".join(p.upper() for p in path)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return value


def effective_config(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The effective settings with provenance, secrets masked. Raises ``ValueError`` with a
    readable message when the config file or an override is invalid."""
    import os

    env = dict(os.environ if environ is None else environ)
    path = config_file()
    raw_file: dict[str, Any] = {}
    if path.is_file():
        try:
            raw_file = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ValueError(f"config file {path} cannot be read: {exc}") from None
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"invalid setting ({problems}); check {path} and CCRL_* variables") from None
    from_env = EnvSettingsSource(Settings)()
    from_file = TomlConfigSettingsSource(Settings, toml_file=path)() if path.is_file() else {}
    dumped = settings.model_dump()
    rows: dict[str, dict[str, Any]] = {}
    for key_path, description in _leaves(Settings):
        if _lookup(from_env, key_path) is not _MISSING:
            source = "environment"
        elif _lookup(from_file, key_path) is not _MISSING:
            source = "config file"
        else:
            source = "default"
        rows[".".join(key_path)] = {
            "value": mask_setting(key_path[-1], _plain(_lookup(dumped, key_path))),
            "source": source,
            "env": _env_name(key_path),
            "description": description,
        }
    return {
        "config_file": str(path),
        "config_file_exists": path.is_file(),
        "settings": rows,
        "unknown_file_keys": _unknown_keys(raw_file, Settings),
        "unknown_env": sorted(_unknown_env(env)),
    }


@app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print every setting's effective value and its source (default, config file, environment)."""
    err = Console(stderr=True)
    try:
        report = effective_config()
    except ValueError as exc:
        # soft_wrap: a long path must not be broken into lines; Text: no markup in the message.
        err.print(Text.assemble(("error:", "red"), f" {exc}"), highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    console = Console()
    exists = "" if report["config_file_exists"] else " (not present: defaults and environment only)"
    console.print(f"Config file: {report['config_file']}{exists}", highlight=False)
    table = Table(show_lines=False)
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", no_wrap=True)
    for key, row in report["settings"].items():
        style = {"environment": "bold yellow", "config file": "bold cyan"}.get(row["source"], "")
        table.add_row(key, str(row["value"]), f"[{style}]{row['source']}[/]" if style else row["source"])
    console.print(table)
    console.print(
        "Override a key with CCRL_<KEY>, or CCRL_<SECTION>__<KEY> inside a section "
        "(e.g. CCRL_AGENT__MIN_TRACES_FOR_SFT=10); `--json` lists each variable name.",
        highlight=False, style="dim",
    )
    for key in report["unknown_file_keys"]:
        err.print(f"[yellow]warning:[/yellow] {report['config_file']}: unknown key '{key}' is ignored", highlight=False)
    for name in report["unknown_env"]:
        err.print(f"[yellow]warning:[/yellow] environment variable {name} matches no setting and is ignored", highlight=False)
