"""Top-level admin commands: ``ccrl status`` and ``ccrl purge`` (``purge_cmd``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ccrl.agent.core.config import get_settings

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _hooks_label(item: dict[str, Any]) -> str:
    if item["error"]:
        return "[red]unreadable settings file[/red]"
    if not item["events"]:
        return "not installed"
    text = "installed" if item["installed"] else f"partial ({len(item['events'])} events)"
    if not item["runnable"]:
        text += ", [red]interpreter missing: run ccrl hooks install again[/red]"
    elif not item["up_to_date"]:
        text += ", [yellow]older command: run ccrl hooks install again[/yellow]"
    return text


def status(
    project_dir: Path | None = typer.Option(
        None, "--project-dir", help="Project whose hook settings to check (default: current directory)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON (stable keys)."),
) -> None:
    """What ccrl has captured so far, what is waiting to be ingested, and whether hooks are installed."""
    from ccrl.agent.operations.status import gather_status

    info = gather_status(get_settings(), project_dir)
    if as_json:
        _print_json(info)
        if info["store"]["error"]:
            raise typer.Exit(1)
        return
    store, pending = info["store"], info["pending"]
    table = Table(title="ccrl status", show_header=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("data dir", escape(info["data_dir"]))
    table.add_row("database", escape(info["database_url"]))
    table.add_row("sessions", _count(store["sessions"]))
    table.add_row("traces", f"{_count(store['traces'])} ({_count(store['subagent_traces'])} subagent)")
    errors = store["tool_errors"]
    table.add_row("tool calls", f"{_count(store['tool_calls'])} ({_count(errors)} error{'' if errors == 1 else 's'})")
    table.add_row("hook events", _count(store["hook_events"]))
    table.add_row("pending events", f"{pending['total']:,} (inbox {pending['inbox']:,}, spool {pending['spool']:,})")
    table.add_row("quarantined", _count(store["quarantined"]))
    table.add_row("last capture", info["last_capture_at"] or "never")
    for scope, item in info["hooks"].items():
        table.add_row(f"hooks ({scope})", _hooks_label(item))
    from ccrl.agent.daemon.agent_status import agent_rows

    for label, value in agent_rows(info["agent"]):
        table.add_row(label, escape(value))
    _out.print(table)
    for problem in (store["error"], pending["error"]):
        if problem:
            _err.print(f"[red]error:[/red] {escape(problem)}")
    if store["error"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the top-level app."""
    app.command("status")(status)
    from ccrl.agent.cli.purge_cmd import purge

    app.command("purge")(purge)
