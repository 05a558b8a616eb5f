"""``ccrl demo``: the whole loop on the embedded default model, from the shipped sample sessions
(``ccrl.agent.operations.demo``), with a progress bar per step and an HTML report at the end.

In a terminal each step has a rich progress bar; otherwise (CI, a pipe) one line per step and
per notice goes to stderr. ``--json`` prints the result on stdout. The exit status is non-zero
when a step failed (a step not run for a stated reason, e.g. Ollama unreachable, is not a
failure).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

STATUS_STYLE = {"done": "green", "failed": "bold red", "not run": "yellow", "not available": "yellow"}


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


class _RichStep:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task

    def update(self, **changes: Any) -> None:
        """``total`` (None: unknown), ``completed``, ``description``; keys left out stay as they are."""
        fields: dict[str, Any] = {}
        if "total" in changes:
            fields["total"] = changes["total"]
        if changes.get("completed") is not None:
            fields["completed"] = changes["completed"]
        if changes.get("description") is not None:
            fields["detail"] = escape(str(changes["description"]))
        self.progress.update(self.task, **fields)

    def note(self, message: str) -> None:
        self.progress.console.print(f"  [dim]·[/dim] {escape(message)}")


class RichUI:
    """One progress bar per step, in a terminal."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/green]"),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=28),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[detail]}"),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichUI:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    @contextmanager
    def step(self, key: str, title: str) -> Iterator[_RichStep]:
        task = self.progress.add_task(title, total=None, detail="")
        self.tasks[key] = task
        yield _RichStep(self.progress, task)

    def finish(self, key: str, result: Any) -> None:
        task = self.tasks[key]
        total = self.progress.tasks[task].total or 1
        style = STATUS_STYLE.get(result.status, "")
        detail = f"[{style}]{escape(result.status)}[/{style}] in {_seconds(result.seconds)}"
        if result.message:
            detail += f": {escape(result.message[:160])}"
        self.progress.update(task, total=total, completed=total, detail=detail)


class _PlainStep:
    def __init__(self, key: str) -> None:
        self.key = key
        self.total: float | None = None
        self.shown = -1

    def update(self, **changes: Any) -> None:
        """Prints a line at each quarter of a step with a known total."""
        if "total" in changes:
            self.total = changes["total"]
        completed, description = changes.get("completed"), changes.get("description")
        if completed is not None and self.total:
            quarter = int(4 * completed / self.total)
            if quarter > self.shown:
                self.shown = quarter
                print(f"[{self.key}] {completed:g}/{self.total:g}" + (f" {description}" if description else ""),
                      file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        print(f"[{self.key}] {message}", file=sys.stderr, flush=True)


class PlainUI:
    """Line-by-line progress on stderr, without a terminal."""

    def __enter__(self) -> PlainUI:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    @contextmanager
    def step(self, key: str, title: str) -> Iterator[_PlainStep]:
        print(f"[{key}] {title}", file=sys.stderr, flush=True)
        yield _PlainStep(key)

    def finish(self, key: str, result: Any) -> None:
        line = f"[{key}] {result.status} in {_seconds(result.seconds)} (CPU {_seconds(result.cpu_seconds)})"
        print(line + (f": {result.message}" if result.message else ""), file=sys.stderr, flush=True)


def _summary(result: Any) -> None:
    from ccrl.agent.operations.demo_report import metric_rows

    rows = metric_rows(result)
    if rows:
        from rich.table import Table

        table = Table(title="Held-out next-action agreement with Claude (95% interval)")
        table.add_column("model / baseline", style="bold")
        table.add_column("next action (primary)")
        table.add_column("tool names")
        table.add_column("reward")
        judged = (result.gate or {}).get("judged")
        for row in rows:
            style = "green" if row["key"] == judged else ""
            table.add_row(escape(row["subject"]), row["next_action"], row["tool_name"], row["reward"], style=style)
        _out.print(table)
    if result.gate:
        verdict = "[green]passed[/green]" if result.gate.get("passed") else "[red]did not pass[/red]"
        _out.print(f"Deployment gate {verdict}: {escape(str(result.gate.get('reason')))}")
    deploy = result.deploy or {}
    if deploy.get("registered"):
        _out.print(f"Registered with Ollama as [bold]{escape(str(deploy.get('tag')))}[/bold]: {escape(str(deploy.get('run')))}")
    elif deploy.get("command"):
        _out.print(f"[yellow]Not registered with Ollama[/yellow]: {escape(str(deploy.get('why')))}.\n"
                   f"  Once it can be: {escape(deploy['command'])}")
    _out.print(f"Whole demo: {_seconds(result.seconds)} (CPU {_seconds(result.cpu_seconds)}).")
    if result.report:
        _out.print(f"Report: [bold]{escape(result.report)}[/bold] (open it in a browser)")


def demo_command(
    directory: Path | None = typer.Option(
        None, "--dir", help="Demo data folder (default: CCRL_HOME/demo). Emptied on every run, except its caches."),
    profile: str = typer.Option("demo", "--profile", help="Budgets: demo (about 15 minutes on 2 CPU cores) or ci (tiny)."),
    base_model: str | None = typer.Option(
        None, "--base-model", help="Base model to start from instead of the profile's (a local folder or hub id)."),
    ollama_host: str | None = typer.Option(
        None, "--ollama-host", help="Ollama to register the demo model with (default: OLLAMA_HOST or localhost)."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of SFT and RL (default: the trainers' own, 42); the held-out split does not move."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Run the whole loop on the sample sessions shipped with ccrl: import, dataset, SFT and RL
    on the embedded default model, GGUF export, evaluation against the base model and two
    baselines, registration with Ollama as cc-claude-agent-demo, and an HTML report.

    It works in a folder of its own and never touches your data or your cc-claude-agent model.
    """
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.core.lock import LockBusy
    from ccrl.agent.operations.demo import PROFILES, DemoError, default_demo_dir, run_demo

    if profile not in PROFILES:
        _fail(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}", code=2)
    from ccrl.agent.core.logging_setup import configure_logging

    # Warnings only, to the process's own stderr (never into --json's stdout, nor through the
    # progress bars): the gate's decision and the runs' numbers are in the report.
    configure_logging("warning", stream=sys.__stderr__)
    user_home = get_settings().home
    demo_dir = directory or default_demo_dir(user_home)
    interactive = _err.is_terminal and not as_json
    ui = RichUI(_err) if interactive else PlainUI()
    try:
        with ui:
            result = run_demo(demo_dir, user_home, ui, profile=profile, base_model=base_model, ollama_host=ollama_host,
                              seed=seed)
    except DemoError as exc:
        _fail(str(exc), code=2)
    except LockBusy as busy:
        _fail(f"another `ccrl demo` is running in {demo_dir} ({busy})")
    except KeyboardInterrupt:
        _fail("demo interrupted; run `ccrl demo` again to start over", 130)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        _summary(result)
    failed = [s for s in result.steps if s.status == "failed"]
    if failed:
        for step in failed:
            _err.print(f"[red]error:[/red] {escape(step.title)} failed: {escape(step.message)}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``ccrl demo`` to the top-level app."""
    app.command("demo")(demo_command)
