"""``ccrl doctor [--json]``: check the installation and say how to fix each problem
(``ccrl.agent.operations.doctor``). Exits 1 when something essential is broken (an ``error`` check)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

_out = Console(highlight=False)

LEVEL_STYLE = {"ok": "green", "info": "cyan", "warning": "yellow", "error": "bold red"}


def doctor_command(
    ollama_host: str | None = typer.Option(None, "--ollama-host", help="Ollama to check (default: OLLAMA_HOST or localhost)."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Check Python, the extras, CUDA, disk space, the data directory, database and hook inbox,
    pending events, the hooks, the agent service and Ollama; say how to fix each problem."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.operations.doctor import ERROR, run_checks, worst

    checks = run_checks(get_settings(), ollama=ollama_host)
    level = worst(checks)
    if as_json:
        typer.echo(json.dumps({"status": level, "checks": [c.to_dict() for c in checks]}, indent=2, ensure_ascii=False))
    else:
        table = Table(title="ccrl doctor", show_lines=False)
        table.add_column("check", style="bold", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("found")
        table.add_column("how to fix")
        for check in checks:
            style = LEVEL_STYLE.get(check.level, "")
            table.add_row(escape(check.name), f"[{style}]{check.level}[/{style}]", escape(check.detail), escape(check.fix))
        _out.print(table)
        errors = sum(c.level == ERROR for c in checks)
        warnings = sum(c.level == "warning" for c in checks)
        summary = ("[bold red]something essential is broken[/bold red]" if errors else
                   "[yellow]working, with parts to fix[/yellow]" if warnings else "[green]all good[/green]")
        _out.print(f"{summary}: {errors} error(s), {warnings} warning(s)")
    if level == ERROR:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``ccrl doctor`` to the top-level app."""
    app.command("doctor")(doctor_command)
