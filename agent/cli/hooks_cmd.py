"""``ccrl hooks install|uninstall|status``: ccrl's capture hook in Claude Code settings files."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ccrl.agent.capture import claude_settings
from ccrl.agent.capture.claude_settings import HOOK_EVENTS, SCOPES, SettingsFileError, settings_path
from ccrl.agent.core.config import Settings, get_settings

app = typer.Typer(help="Install ccrl's capture hook into Claude Code settings.", no_args_is_help=True)

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


class Scope(str, Enum):
    """Which Claude Code settings file: user = ~/.claude/settings.json, project =
    <dir>/.claude/settings.json (shared, usually committed), local = <dir>/.claude/settings.local.json."""

    user = "user"
    project = "project"
    local = "local"


SCOPE_OPTION = typer.Option(
    Scope.user,
    "--scope",
    help="user: ~/.claude/settings.json (every session on this machine); project: "
    "DIR/.claude/settings.json (shared with the repository); local: DIR/.claude/settings.local.json.",
)
PROJECT_DIR_OPTION = typer.Option(
    None, "--project-dir", help="Project directory for the project and local scopes (default: current directory)."
)
JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON.")


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def hook_command_for(settings: Settings) -> str:
    """The command Claude Code runs for each event: absolute interpreter and script, CCRL_HOME
    pinned to this data directory, exit 0 even once the installation is gone."""
    from ccrl.hooks.capture import hook_command

    return hook_command(str(settings.home))


@app.command()
def install(
    scope: Scope = SCOPE_OPTION,
    project_dir: Path | None = PROJECT_DIR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Register ccrl's hook for every Claude Code event (idempotent; keeps all other settings)."""
    import sqlite3

    from ccrl.agent.capture.drain import ensure_local_stores

    settings = get_settings()
    path = settings_path(scope.value, project_dir)
    try:
        # Data dir, spool dir and inbox first: the very first event needs somewhere to go.
        inbox = ensure_local_stores(settings)
    except (OSError, sqlite3.Error) as exc:
        _fail(f"cannot prepare the data directory {settings.home}: {exc}. Check its permissions and free space.")
    command = hook_command_for(settings)
    try:
        change = claude_settings.install(path, command)
    except SettingsFileError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {path}: {exc}. Nothing was changed.")
    if as_json:
        _print_json(
            {
                "scope": scope.value,
                "path": str(change.path),
                "changed": change.changed,
                "created": change.created,
                "backup": str(change.backup) if change.backup else None,
                "command": command,
                "events": list(HOOK_EVENTS),
                "inbox": str(inbox),
                "hand_made": change.hand_made,
            }
        )
        return
    if not change.changed:
        _out.print(f"ccrl's hook is already installed in {escape(str(change.path))} (nothing changed).")
    else:
        verb = "Created" if change.created else "Updated"
        _out.print(f"{verb} {escape(str(change.path))}: ccrl's hook runs on {len(HOOK_EVENTS)} events.")
        if change.backup:
            _out.print(f"Previous file kept as {escape(str(change.backup))}.")
    _out.print(f"Hook command: {escape(command)}")
    for other in change.hand_made:
        _err.print(f"[yellow]note:[/yellow] your own entry {escape(other)!r} runs ccrl's hook as well, so events "
                   f"are captured twice; ccrl left it as it is: remove it from {escape(str(change.path))} if it "
                   "is an older hand-made copy.")
    if scope is Scope.project:
        _out.print(
            "[yellow]note:[/yellow] the project scope is usually committed; the command holds an "
            "absolute path of this machine. --scope local keeps it private."
        )


@app.command()
def uninstall(
    scope: Scope = SCOPE_OPTION,
    project_dir: Path | None = PROJECT_DIR_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Remove ccrl's hook entries (only those) from a Claude Code settings file."""
    path = settings_path(scope.value, project_dir)
    try:
        change = claude_settings.uninstall(path)
    except SettingsFileError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {path}: {exc}. Nothing was changed.")
    if as_json:
        _print_json(
            {
                "scope": scope.value,
                "path": str(change.path),
                "changed": change.changed,
                "backup": str(change.backup) if change.backup else None,
            }
        )
        return
    if change.changed:
        _out.print(f"Removed ccrl's hook from {escape(str(change.path))}.")
        if change.backup:
            _out.print(f"Previous file kept as {escape(str(change.backup))}.")
    else:
        _out.print(f"ccrl's hook was not in {escape(str(change.path))} (nothing changed).")


def _installed_label(status: dict[str, Any]) -> str:
    if status["error"]:
        return "[red]unreadable[/red]"
    if status["installed"]:
        return "[green]yes[/green]"
    if status["events"]:
        return f"[yellow]partial ({len(status['events'])}/{len(HOOK_EVENTS)})[/yellow]"
    return "no"


def _runnable_label(status: dict[str, Any]) -> str:
    if not status["events"]:
        return "-"
    if status["runnable"]:
        return "[green]yes[/green]"
    return f"[red]missing: {escape(', '.join(status['missing_files']) or '?')}[/red]"


@app.command()
def status(project_dir: Path | None = PROJECT_DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Whether ccrl's hook is installed per scope, and whether its interpreter still exists."""
    settings = get_settings()
    expected = hook_command_for(settings)
    scopes = [
        claude_settings.scope_status(scope, settings_path(scope, project_dir), expected).to_dict()
        for scope in SCOPES
    ]
    if as_json:
        _print_json({"expected_command": expected, "scopes": scopes})
        return
    table = Table(title="ccrl hooks")
    for column in ("scope", "settings file", "installed", "can run", "current command"):
        table.add_column(column, overflow="fold")
    for item in scopes:
        current = "-" if not item["events"] else ("yes" if item["up_to_date"] else "[yellow]no: reinstall[/yellow]")
        table.add_row(item["scope"], escape(item["path"]), _installed_label(item), _runnable_label(item), current)
    _out.print(table)
    for item in scopes:
        if item["error"]:
            _err.print(f"[red]{item['scope']}:[/red] {escape(item['error'])}")
        if item["legacy"]:
            _err.print(f"[yellow]{item['scope']}:[/yellow] the entries in {escape(item['path'])} have the form of "
                       "an earlier ccrl, which blocks every Claude Code session once ccrl is moved or removed: "
                       f"run ccrl hooks install --scope {item['scope']}.")
        if item["hooks_disabled"]:
            _err.print(f"[yellow]{item['scope']}:[/yellow] disableAllHooks is true in {escape(item['path'])}: no hook runs.")


@app.command()
def collect(project_dir: Path | None = PROJECT_DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Move captured events that sit where the agent never reads them (another data directory,
    another runtime or temp spool folder; `ccrl doctor` lists them) into this data directory's
    spool, where the next ingest stores them."""
    from ccrl.agent.capture.stray_events import collect_stray_events

    report = collect_stray_events(get_settings(), project_dir)
    if as_json:
        _print_json(report.to_dict())
    elif not report.places:
        _out.print("No captured events outside this data directory: nothing to move.")
    else:
        for place in report.places:
            _out.print(f"{escape(place.path)}: {place.events} event(s)")
        _out.print(f"Moved {report.moved} event(s) into {escape(report.into)}; `ccrl ingest` (the agent does it "
                   "every few seconds) stores them.")
    for error in report.errors:
        _err.print(f"[red]error:[/red] {escape(error)}")
    if report.errors:
        raise typer.Exit(1)


@app.command("command")
def show_command(as_json: bool = JSON_OPTION) -> None:
    """Print the exact hook command for this data directory (for editing settings by hand;
    settings.example.json shows where it goes)."""
    command = hook_command_for(get_settings())
    if as_json:
        _print_json({"command": command})
    else:
        typer.echo(command)
