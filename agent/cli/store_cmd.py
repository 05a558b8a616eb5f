"""``ccrl store copy``: copy a store's captured data into another (a member's local history into
the team's shared store)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="The store itself: copy captured data between stores.", no_args_is_help=True)


@app.command("copy")
def copy(
    to: str = typer.Option(
        None, "--to",
        help="SQLAlchemy URL of the store to copy into, e.g. postgresql+psycopg://user:PASSWORD@host/ccrl "
             "(default: the configured database_url, when it is not this data directory's SQLite file).",
    ),
    source: str = typer.Option(
        None, "--from", help="URL of the store to copy from (default: this data directory's SQLite file, ccrl.db)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Copy sessions, traces, tool calls, hook events, quarantined input and purge tombstones into
    another store, e.g. your local history into the team's shared store. Idempotent: rows the
    target has (by the identities forwarding uses) are skipped, so running it twice, or again
    after an interruption, copies only what is missing. Rows without an origin are stamped with
    this member and machine. Datasets, training runs, models and cycles are not copied."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.core.secrets_display import mask_url
    from ccrl.agent.operations.store_copy import StoreCopyError, copy_store, local_store_url

    err = Console(stderr=True)
    settings = get_settings()
    target = to or settings.database_url
    if not target or target == local_store_url(settings):
        err.print("[red]error:[/red] say which store to copy into: --to postgresql+psycopg://USER:PASSWORD@HOST/DB "
                  "(or set database_url / CCRL_DATABASE_URL to the shared store).", highlight=False)
        raise typer.Exit(2)
    err.print(f"Copying {escape(mask_url(source or local_store_url(settings)))} into {escape(mask_url(target))}",
              highlight=False)
    progress = _Progress(err, enabled=not as_json and err.is_terminal)
    try:
        with progress:
            report = copy_store(settings, target, source, progress=progress.update)
    except StoreCopyError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    data = report.as_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"copied into {data['target']}")
    for column in ("table", "read", "copied", "already there"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for name, count in data["tables"].items():
        table.add_row(name, f"{count['read']:,}", f"{count['copied']:,}", f"{count['present']:,}")
    console = Console()
    console.print(table)
    console.print(f"{data['copied']:,} rows copied; not copied (this machine's own work): "
                  f"{', '.join(data['not_copied'])}.", highlight=False)


class _Progress:
    """A bar per table on a terminal; one line per finished table otherwise."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console, self.enabled = console, enabled
        self.bars: Any = None
        self.tasks: dict[str, Any] = {}
        self.finished: set[str] = set()

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import Progress

            self.bars = Progress(console=self.console, transient=False)
            self.bars.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bars is not None:
            self.bars.stop()

    def update(self, table: str, done: int, total: int) -> None:
        if self.bars is not None:
            if table not in self.tasks:
                self.tasks[table] = self.bars.add_task(table, total=total)
            self.bars.update(self.tasks[table], completed=done)
        elif done >= total and table not in self.finished:
            self.finished.add(table)
            self.console.print(f"{table}: {done:,} read", highlight=False)
