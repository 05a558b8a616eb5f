"""``ccrl purge``: delete captured data, and with ``--derived`` what was built from it.

The summary (text, or ``--json``) says what was deleted, what derived artifacts still hold
purged data (and the command that removes them), and what the store cannot erase.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ccrl.agent.cli.admin import _err, _fail, _out, _print_json
from ccrl.agent.core.config import get_settings

_LABELS = {
    "sessions": "sessions",
    "traces": "traces",
    "tool_calls": "tool calls",
    "hook_events": "hook events",
    "quarantined": "quarantined items",
    "inbox_events": "pending inbox events",
    "spool_files": "spool files",
}


def _target(session: str | None, project: str | None, before: str | None, everything: bool,
            derived: bool) -> Any:
    """The captured data to purge; None for ``--derived`` alone (only what was built from data
    purged earlier)."""
    from ccrl.agent.operations.purge import PurgeError, PurgeTarget, parse_before

    chosen = [flag for flag, value in (("--session", session), ("--project", project),
                                       ("--before", before), ("--all", everything)) if value]
    if not chosen and derived:
        return None
    if len(chosen) != 1:
        given = f" (given: {', '.join(chosen)})" if chosen else ""
        _fail("say what to purge with exactly one of --session ID, --project PATH, --before DATE, --all "
              f"(or --derived alone: what was built from data purged earlier){given}.", 2)
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


def _counts_table(title: str, counts: dict[str, int]) -> Group:
    # The title on a line of its own: the table is narrow, a project path may not be.
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, label in _LABELS.items():
        table.add_row(label, f"{counts[key]:,}")
    return Group(Text(title, style="bold"), table)


def _derived_lines(found: Any) -> list[str]:
    lines = []
    for d in found.datasets:
        held = "all of it" if d.purged_traces < 0 else f"{d.purged_traces} purged trace(s)"
        lines.append(f"dataset v{d.number} ({held}): {d.path}")
    for r in found.runs:
        lines.append(f"training run {r.id} ({r.phase}, {r.why}): {r.output_dir or 'no folder'}")
    for m in found.models:
        tags = f"; Ollama: {', '.join(m.ollama_tags)}" if m.ollama_tags else ""
        lines.append(f"model v{m.number} ({m.status}{tags}): {m.gguf_path or 'GGUF already removed'}")
    if found.evaluations:
        lines.append(f"evaluations {', '.join(str(e.id) for e in found.evaluations)} (details files with "
                     "held-out prompts and generated plans)")
    if found.ab_votes:
        lines.append(f"{len(found.ab_votes)} A/B vote(s) on those evaluations")
    return lines


def _derived_json(found: Any, removal: Any, command: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"removed": removal is not None, "found": found.as_dict(), "ollama_deleted": [],
                            "ollama_already_gone": [], "latest": None, "files_removed": [], "remaining": [],
                            "command": command}
    if removal is not None:
        data.update({k: v for k, v in removal.as_dict().items() if k != "removed"})
    return data


def _print_derived(found: Any, removal: Any, command: str | None) -> None:
    from ccrl.agent.operations.purge_derived import unreadable_note

    lines = _derived_lines(found)
    if removal is not None:
        if lines:
            _out.print(Text("Removed, built from purged data:", style="bold"))
        for line in lines:
            _out.print(f"  {escape(line)}")
        if removal.ollama_deleted or removal.ollama_already_gone:
            gone = f" ({', '.join(removal.ollama_already_gone)} already gone)" if removal.ollama_already_gone else ""
            _out.print(f"Ollama: deleted {escape(', '.join(removal.ollama_deleted) or 'nothing')}{escape(gone)}.")
        if removal.latest:
            _out.print(f"Ollama: {escape(removal.latest)}.")
        if found.cycles:
            _out.print(f"Cycles {', '.join(map(str, found.cycles))} keep their history without links to what was removed.")
        for line in removal.remaining:
            _err.print(f"[yellow]left:[/yellow] {escape(line)}")
        if not lines:
            _out.print("Nothing built from purged data is left.")
        return
    if lines:
        _out.print(Text("Still holding purged data (built from it before the purge):", style="bold"))
        for line in lines:
            _out.print(f"  {escape(line)}")
        _out.print(f"Remove them, with their files and Ollama tags: [bold]{escape(command or '')}[/bold]")
    for d in found.unreadable:
        _err.print(f"[yellow]unknown:[/yellow] {escape(unreadable_note(get_settings(), d))}")


def _everything(settings: Any, target: Any) -> bool:
    """A local store purged whole: every dataset version held its data, readable or not."""
    from ccrl.agent.store.remote import is_remote

    return target is not None and target.mode == "all" and not is_remote(settings)


def _find(settings: Any, plan: Any, target: Any) -> Any:
    """What holds purged data now; with ``plan`` (not carried out yet) as if it had been."""
    from ccrl.agent.operations.purge_derived import find_derived, purged_data

    purged = purged_data(settings, plan.session_ids, plan.trace_ids) if plan is not None else purged_data(settings)
    return find_derived(settings, purged, everything=_everything(settings, target))


def _report(target: Any, plan: Any, result: Any, found: Any, removal: Any, *, dry_run: bool, as_json: bool) -> None:
    from ccrl.agent.operations.purge_derived import DERIVED_COMMAND

    command = DERIVED_COMMAND if removal is None and not found.empty else None
    if as_json:
        data: dict[str, Any] = {"target": target.mode if target is not None else "derived", "dry_run": dry_run,
                                "counts": plan.counts() if plan is not None else {k: 0 for k in _LABELS},
                                "vacuumed": [], "notes": [], "store": {}, "remains": [],
                                "transcripts": plan.transcripts if plan is not None else []}
        if result is not None:
            data.update({"counts": result.removed, "vacuumed": result.vacuumed, "notes": result.notes,
                         "store": result.store, "remains": result.remains, "transcripts": result.transcripts})
        data["derived"] = _derived_json(found, removal, command)
        _print_json(data)
        return
    if result is not None:
        _out.print(_counts_table(f"Removed {target.describe()}:", result.removed))
        if result.vacuumed:
            _out.print(f"Compacted: {', '.join(result.vacuumed)} (deleted text no longer on disk).")
    elif plan is not None and not plan.empty:
        _out.print(_counts_table(f"Would remove {target.describe()}:", plan.counts()))
    elif plan is not None:
        _out.print(f"Nothing to remove ({escape(target.describe())}).")
    _print_derived(found, removal, command)
    if removal is None and found.empty and target is None:
        _out.print("Nothing built from purged data is left.")
    if result is not None:
        if result.remains:
            _out.print(Text("What remains:", style="bold"))
        for line in result.remains:
            _out.print(f"  {escape(line)}")
        for note in result.notes:
            _err.print(f"[yellow]note:[/yellow] {escape(note)}")


def purge(
    session: str | None = typer.Option(None, "--session", help="Purge one session (its id)."),
    project: str | None = typer.Option(None, "--project", help="Purge every session run in PATH or below it."),
    before: str | None = typer.Option(
        None, "--before", help="Purge everything captured before DATE (YYYY-MM-DD[THH:MM], local time)."
    ),
    everything: bool = typer.Option(False, "--all", help="Purge all captured data."),
    derived: bool = typer.Option(
        False, "--derived",
        help="Also remove what was built from purged data: dataset versions, training runs (adapters, merged "
             "models), model versions (GGUF files, Ollama tags), evaluations. Alone: what earlier purges left."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
    as_json: bool = typer.Option(
        False, "--json", help="Print as JSON: target, dry_run, counts (removed, or would be), vacuumed, notes, "
                              "store (what it cannot reclaim), remains, transcripts, derived."),
) -> None:
    """Delete captured data for good: rows, pending inbox events and spool files; then compact
    the database files so the deleted text is gone from disk. Says what was built from the
    purged data (datasets, models, Ollama tags) and removes it with --derived."""
    from sqlalchemy.exc import SQLAlchemyError

    from ccrl.agent.operations.purge import PurgeError, execute_purge, plan_purge
    from ccrl.agent.operations.purge_derived import DerivedError, remove_derived
    from ccrl.agent.release.deploy import DeployError

    target = _target(session, project, before, everything, derived)
    settings = get_settings()
    try:
        plan = plan_purge(settings, target) if target is not None else None
        captured = plan is not None and not plan.empty
        found = _find(settings, plan if captured else None, target)
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"cannot read the store or the inbox: {exc}")
    if dry_run or (not captured and (not derived or found.empty)):
        _report(target, plan, None, found, None, dry_run=dry_run, as_json=as_json)
        return
    if not yes:
        if not sys.stdin.isatty():
            _fail("purge deletes data for good and asks for confirmation, but stdin is not a terminal. "
                  "Re-run with --yes to confirm.")
        if captured:
            _err.print(_counts_table(f"Purge {target.describe()}:", plan.counts()))
        if derived:
            _err.print("and everything built from purged data:")
            for line in _derived_lines(found):
                _err.print(f"  {escape(line)}")
        if not typer.confirm("Delete this for good?", default=False, err=True):
            _err.print("Nothing removed.")
            raise typer.Exit(1)
    result = removal = None
    if captured:
        try:
            result = execute_purge(settings, target)
        except PurgeError as exc:
            _fail(str(exc))
        except (SQLAlchemyError, OSError) as exc:
            _fail(f"purge failed: {exc}. Run it again once the problem is fixed: it removes what is left.")
    if derived:
        try:
            removal = remove_derived(settings, everything=_everything(settings, target))
        except (DerivedError, DeployError) as exc:
            done = "The captured data was purged; n" if result is not None else "N"
            _fail(f"{exc}. {done}othing built from it was removed: run `ccrl purge --derived` again.")
        found = removal.removed
    else:
        found = _find(settings, None, target)
    _report(target, plan, result, found, removal, dry_run=False, as_json=as_json)
