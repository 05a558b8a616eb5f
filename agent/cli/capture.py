"""Top-level capture commands: ``ccrl ingest`` and ``ccrl import [PATH]``.

The work happens in ``ccrl.agent.capture.ingest`` and ``ccrl.agent.capture.importer``, imported inside the
commands so ``ccrl --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _table(title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for label, value in rows:
        table.add_row(label, f"{value:,}" if isinstance(value, int) else escape(str(value)))
    _out.print(table)


def _report_errors(errors: list[str]) -> None:
    for error in errors:
        _err.print(f"[red]error:[/red] {escape(error)}")
    if errors:
        _err.print("The other sessions were stored; fix the cause and run the command again (it is idempotent).")
        raise typer.Exit(1)


def ingest_command(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Store captured hook events (inbox and spool) and rebuild the traces of changed sessions."""
    from ccrl.agent.capture.ingest import ingest
    from ccrl.agent.core.lock import LockBusy

    try:
        report = ingest()
    except LockBusy as busy:
        _fail(f"another ingest or import is still running ({busy}); try again when it has finished.")
    except OSError as exc:
        _fail(f"cannot ingest: {exc}. Check that the data directory is writable and has free space.")
    if as_json:
        _print_json(report.as_dict())
    else:
        drained = report.drain
        rows: list[tuple[str, Any]] = []
        for key, value in drained.items():
            if isinstance(value, int) and not isinstance(value, bool):
                rows.append((f"drain: {key.replace('_', ' ')}", value))
        rows += [
            ("sessions rebuilt", report.sessions),
            ("sessions opted out", report.sessions_ignored),
            ("traces created", report.traces_created),
            ("traces updated", report.traces_updated),
            ("tool calls created", report.tool_calls_created),
            ("transcripts read", report.transcripts_read),
            ("transcripts missing", report.transcripts_missing),
            ("corrupt transcript lines (quarantined)", report.corrupt_lines),
        ]
        _table("ccrl ingest", rows)
    _report_errors(report.errors)


def import_command(
    path: Path | None = typer.Argument(
        None, help="A transcript (.jsonl) or a directory of them. Default: ~/.claude/projects."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Backfill traces from existing Claude Code transcripts (idempotent: twice = once)."""
    from ccrl.agent.capture.importer import import_transcripts
    from ccrl.agent.core.lock import LockBusy

    try:
        report = import_transcripts(path)
    except FileNotFoundError as exc:
        _fail(f"{exc}. Pass a transcript file or a directory such as ~/.claude/projects.", code=2)
    except LockBusy as busy:
        _fail(f"another ingest or import is still running ({busy}); try again when it has finished.")
    except OSError as exc:
        _fail(f"cannot import: {exc}. Check that the data directory is writable and has free space.")
    if as_json:
        _print_json(report.as_dict())
    else:
        if report.disabled:
            _out.print(f"[yellow]{escape(report.message)}[/yellow]")
            return
        _table(
            f"ccrl import {report.path}",
            [
                ("files", report.files),
                ("sessions", report.sessions),
                ("sessions opted out (.ccrl-ignore)", report.sessions_ignored),
                ("traces", report.traces),
                ("  of which subagent runs", report.subagent_traces),
                ("  new", report.traces_created),
                ("tool calls", report.tool_calls),
                ("  new", report.tool_calls_created),
                ("  failed", report.tool_errors),
                ("skipped lines (corrupt, quarantined)", report.skipped_lines),
                ("ignored lines (no turn content)", report.ignored_lines),
                ("turns already stored under another session", report.duplicates_skipped),
            ],
        )
        if report.message:
            _out.print(escape(report.message))
    _report_errors(report.errors)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the top-level app."""
    app.command("ingest")(ingest_command)
    app.command("import")(import_command)
