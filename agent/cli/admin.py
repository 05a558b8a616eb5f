"""Top-level admin commands: ``ccrl status`` and ``ccrl purge``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ccrl.agent.config import get_settings

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
    from ccrl.agent.status import gather_status

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
    from ccrl.agent.agent_status import agent_rows

    for label, value in agent_rows(info["agent"]):
        table.add_row(label, escape(value))
    _out.print(table)
    for problem in (store["error"], pending["error"]):
        if problem:
            _err.print(f"[red]error:[/red] {escape(problem)}")
    if store["error"]:
        raise typer.Exit(1)


def _target(session: str | None, project: str | None, before: str | None, everything: bool) -> Any:
    from ccrl.agent.purge import PurgeError, PurgeTarget, parse_before

    chosen = [flag for flag, value in (("--session", session), ("--project", project),
                                       ("--before", before), ("--all", everything)) if value]
    if len(chosen) != 1:
        given = f" (given: {', '.join(chosen)})" if chosen else ""
        _fail(f"say what to purge with exactly one of --session ID, --project PATH, --before DATE, --all{given}.", 2)
    if session is not None:
        if not session.strip():
            _fail("--session needs a session id.", 2)
        return PurgeTarget(mode="session", session_id=session.strip())
    if project is not None:
        if not project.strip():
            _fail("--project needs a path.", 2)
        return PurgeTarget(mode="project", project=project)
    if before is not None:
        try:
            return PurgeTarget(mode="before", before=parse_before(before))
        except PurgeError as exc:
            _fail(str(exc), 2)
    return PurgeTarget(mode="all")


_LABELS = {
    "sessions": "sessions",
    "traces": "traces",
    "tool_calls": "tool calls",
    "hook_events": "hook events",
    "quarantined": "quarantined items",
    "inbox_events": "pending inbox events",
    "spool_files": "spool files",
}


def _counts_table(title: str, counts: dict[str, int]) -> Group:
    # The title on a line of its own: the table is narrow, a project path may not be.
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, label in _LABELS.items():
        table.add_row(label, f"{counts[key]:,}")
    return Group(Text(title, style="bold"), table)


def purge(
    session: str | None = typer.Option(None, "--session", help="Purge one session (its id)."),
    project: str | None = typer.Option(None, "--project", help="Purge every session run in PATH or below it."),
    before: str | None = typer.Option(
        None, "--before", help="Purge everything captured before DATE (YYYY-MM-DD[THH:MM], local time)."
    ),
    everything: bool = typer.Option(False, "--all", help="Purge all captured data."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
    as_json: bool = typer.Option(
        False, "--json", help="Print as JSON: target, dry_run, counts (removed, or would be), vacuumed, notes."
    ),
) -> None:
    """Delete captured data for good: rows, pending inbox events and spool files; then compact
    the database files so the deleted text is gone from disk."""
    from sqlalchemy.exc import SQLAlchemyError

    from ccrl.agent.purge import PurgeError, execute_purge, plan_purge

    target = _target(session, project, before, everything)
    settings = get_settings()
    try:
        plan = plan_purge(settings, target)
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"cannot read the store or the inbox: {exc}")
    preview = plan.counts()
    if dry_run or plan.empty:
        if as_json:
            _print_json({"target": target.mode, "dry_run": dry_run, "counts": preview, "vacuumed": [], "notes": []})
        elif plan.empty:
            _out.print(f"Nothing to remove ({escape(target.describe())}).")
        else:
            _out.print(_counts_table(f"Would remove {target.describe()}:", preview))
        return
    if not yes:
        if not sys.stdin.isatty():
            _fail("purge deletes data for good and asks for confirmation, but stdin is not a terminal. "
                  "Re-run with --yes to confirm.")
        _err.print(_counts_table(f"Purge {target.describe()}:", preview))
        if not typer.confirm("Delete this for good?", default=False, err=True):
            _err.print("Nothing removed.")
            raise typer.Exit(1)
    try:
        result = execute_purge(settings, target)
    except PurgeError as exc:
        _fail(str(exc))
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"purge failed: {exc}. Run it again once the problem is fixed: it removes what is left.")
    if as_json:
        _print_json({"target": target.mode, "dry_run": False, "counts": result.removed,
                     "vacuumed": result.vacuumed, "notes": result.notes})
        return
    _out.print(_counts_table(f"Removed {target.describe()}:", result.removed))
    if result.vacuumed:
        _out.print(f"Compacted: {', '.join(result.vacuumed)} (deleted text no longer on disk).")
    for note in result.notes:
        _err.print(f"[yellow]note:[/yellow] {escape(note)}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the top-level app."""
    app.command("status")(status)
    app.command("purge")(purge)
