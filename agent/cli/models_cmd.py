"""``ccrl export``, ``ccrl deploy``, ``ccrl rollback`` and ``ccrl models list|show``.

- ``export`` turns a finished training run (default: the newest) into a verified GGUF and a new
  candidate model version (``ccrl.agent.release.versions.export_run``).
- ``deploy`` registers a version with Ollama as ``cc-claude-agent:vN`` and points
  ``cc-claude-agent:latest`` at it (``ccrl.agent.release.deploy``); ``--force --reason`` deploys a
  rejected version or one the evaluation gate refused, with the reason recorded.
- ``rollback`` points ``latest`` back at the version deployed before the current one.

Export, deploy and rollback hold the pipeline lock: while the agent (or another command) is
changing models they refuse, or wait with ``--wait``. Every command that prints data has
``--json``; expected problems are one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="Exported model versions.", no_args_is_help=True)

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

STATUS_STYLE = {"candidate": "yellow", "deployed": "bold green", "retired": "dim", "rejected": "red"}


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _progress(message: str) -> None:
    """Progress lines go to stderr (stdout stays for data, e.g. ``--json``)."""
    _err.print(f"[dim]·[/dim] {escape(message)}")


def _size(n: int | None) -> str:
    if not n:
        return "-"
    from ccrl.trainers.export import human_size

    return human_size(n)


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone().strftime("%Y-%m-%d %H:%M")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so an interrupted export removes its partial files."""
    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _pipeline(what: str, wait: bool, home: Path) -> Iterator[None]:
    from ccrl.agent.core.lock import LockBusy, manual_command

    try:
        with manual_command(what, wait=wait, home=home):
            yield
    except LockBusy as busy:
        _fail(f"{busy}; try again later or pass --wait")


def register(app_: typer.Typer) -> None:
    """Add ``export``, ``deploy`` and ``rollback`` to the top-level app, and the ``models`` group."""

    @app_.command("export")
    def export(
        run: int | None = typer.Option(None, "--run", help="Training run id (default: the newest completed run)."),
        quant: str = typer.Option(
            "auto", "--quant",
            help="llama.cpp type: auto (q4_k_m; q8_0 for models under 1B or with rows K-quants cannot take), "
                 "or any type by name (q4_k_m, q5_k_m, q6_k, q8_0, f16, ...).",
        ),
        keep: int | None = typer.Option(None, "--keep", min=1, help="Versions whose files are kept (default: keep_model_versions)."),
        no_stop_check: bool = typer.Option(
            False, "--no-stop-check",
            help="Do not require the model to end its turn in the verification (only for an untrained model).",
        ),
        threads: int | None = typer.Option(None, "--threads", min=1, help="llama.cpp threads (default: 1 on 2 cores, else half)."),
        wait: bool = typer.Option(False, "--wait", help="Wait while the agent (or another command) holds the pipeline."),
        json_out: bool = typer.Option(False, "--json", help="Print the new version as JSON on stdout."),
    ) -> None:
        """Export a trained model to a verified GGUF as a new candidate version."""
        from ccrl.agent.core.config import get_settings
        from ccrl.agent.release.versions import VersionError, export_run, version_json
        from ccrl.trainers.export import ExportError

        settings = get_settings()
        try:
            with _pipeline("ccrl export", wait, settings.home), _sigterm_as_interrupt():
                version = export_run(run, settings=settings, quant=quant, keep=keep, require_stop=not no_stop_check,
                                     threads=threads, progress=_progress)
        except (VersionError, ExportError) as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("export interrupted; nothing was published (partial files removed)", 130)
        if json_out:
            _print_json(version_json(version))
            return
        export = version.metrics.get("export", {})
        _out.print(f"[bold]model version {version.number}[/bold]: candidate, {version.quant} "
                   f"({escape(export.get('quant_reason', ''))}), {_size(version.size_bytes)}\n"
                   f"  file: {escape(str(version.gguf_path))}\n  sha256: {version.gguf_sha256}\n"
                   f"  deploy it with: ccrl deploy --version {version.number}")

    @app_.command("deploy")
    def deploy(
        version: int | None = typer.Option(None, "--version", help="Version number (default: the newest candidate)."),
        force: bool = typer.Option(
            False, "--force",
            help="Deploy a rejected version or one the evaluation gate refused, or replace models under --name "
                 "that ccrl did not create."),
        reason: str | None = typer.Option(None, "--reason", help="Why, with --force (recorded with the version)."),
        name: str | None = typer.Option(None, "--name", help="Ollama model name (default: cc-claude-agent)."),
        host: str | None = typer.Option(None, "--host", help="Ollama URL (default: OLLAMA_HOST, else 127.0.0.1:11434)."),
        wait: bool = typer.Option(False, "--wait", help="Wait while the agent (or another command) holds the pipeline."),
        json_out: bool = typer.Option(False, "--json", help="Print the deployed version as JSON on stdout."),
    ) -> None:
        """Register a model version with Ollama and point cc-claude-agent:latest at it."""
        from ccrl.agent.core.config import get_settings
        from ccrl.agent.release.deploy import DeployError, deploy_version
        from ccrl.agent.release.versions import MODEL_NAME, VersionError, version_json

        if force and not (reason or "").strip():
            _fail("--force needs --reason: say why this version is deployed anyway (it is recorded)", 2)
        settings = get_settings()
        try:
            with _pipeline("ccrl deploy", wait, settings.home):
                row = deploy_version(number=version, settings=settings, force=force, reason=reason,
                                     name=name or MODEL_NAME, host=host, progress=_progress)
        except (VersionError, DeployError) as exc:
            _fail(str(exc))
        if json_out:
            _print_json(version_json(row))
            return
        latest = row.metrics.get("ollama", {}).get("latest", f"{name or MODEL_NAME}:latest")
        _out.print(f"[bold green]deployed[/bold green] model version {row.number} as {escape(str(row.ollama_tag))}; "
                   f"{escape(latest)} points at it.\n  try it: ollama run {escape(latest.removesuffix(':latest'))}")

    @app_.command("rollback")
    def rollback_cmd(
        reason: str | None = typer.Option(None, "--reason", help="Why (recorded with the rolled-back version)."),
        name: str | None = typer.Option(None, "--name", help="Ollama model name (default: cc-claude-agent)."),
        host: str | None = typer.Option(None, "--host", help="Ollama URL (default: OLLAMA_HOST, else 127.0.0.1:11434)."),
        wait: bool = typer.Option(False, "--wait", help="Wait while the agent (or another command) holds the pipeline."),
        json_out: bool = typer.Option(False, "--json", help="Print the restored version as JSON on stdout."),
    ) -> None:
        """Point cc-claude-agent:latest back at the previously deployed version."""
        from ccrl.agent.core.config import get_settings
        from ccrl.agent.release.deploy import DeployError, rollback
        from ccrl.agent.release.versions import MODEL_NAME, VersionError, version_json

        settings = get_settings()
        try:
            with _pipeline("ccrl rollback", wait, settings.home):
                row = rollback(settings=settings, reason=reason, name=name or MODEL_NAME, host=host,
                               progress=_progress)
        except (VersionError, DeployError) as exc:
            _fail(str(exc))
        if json_out:
            _print_json(version_json(row))
            return
        _out.print(f"[bold green]rolled back[/bold green]: {escape(str(row.ollama_tag))} is deployed again.")

    app_.add_typer(app, name="models")


@app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print the versions as JSON.")) -> None:
    """Every model version, with its status and file."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.release.versions import list_versions, rollback_target, version_json
    from ccrl.agent.store.db import session_scope

    with session_scope(get_settings()) as session:
        versions = list_versions(session)
        target = rollback_target(session)
        target_number = target.number if target else None
        rows = [version_json(v) for v in versions]
    if json_out:
        for row in rows:
            row["rollback_target"] = row["number"] == target_number
        _print_json(rows)
        return
    if not rows:
        _out.print("no model versions yet: `ccrl export` makes one from a trained run")
        return
    table = Table(title="model versions")
    for column in ("#", "status", "quant", "size", "created", "deployed", "ollama tag", "file", "gate"):
        table.add_column(column)
    for row in rows:
        gate = row["gate"] or {}
        status = f"[{STATUS_STYLE.get(row['status'], '')}]{row['status']}[/]"
        if row["number"] == target_number:
            status += " (rollback target)"
        table.add_row(str(row["number"]), status, row["quant"] or "-", _size(row["size_bytes"]),
                      _when(_parse_time(row["created_at"])), _when(_parse_time(row["deployed_at"])),
                      escape(row["ollama_tag"] or "-"), "yes" if row["file_present"] else "[dim]removed[/dim]",
                      "-" if "passed" not in gate else ("passed" if gate["passed"] else "[red]failed[/red]"))
    _out.print(table)


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@app.command("show")
def show_cmd(
    number: int = typer.Argument(..., help="Version number."),
    json_out: bool = typer.Option(False, "--json", help="Print the version as JSON."),
) -> None:
    """One model version: where it came from, its file, its verification and its history."""
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.release.versions import VersionError, get_version, history, version_json
    from ccrl.agent.store.db import session_scope

    try:
        with session_scope(get_settings()) as session:
            version = get_version(session, number)
            data = version_json(version)
            events = history(version)
    except VersionError as exc:
        _fail(str(exc))
    if json_out:
        _print_json(data)
        return
    export = (data.get("metrics") or {}).get("export", {})
    check = export.get("verification", {})
    table = Table(title=f"model version {number}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("status", data["status"]),
        ("base model", data["base_model"] or "-"),
        ("runs", f"sft {data['sft_run_id'] or '-'}, rl {data['rl_run_id'] or '-'}"),
        ("dataset version", export.get("dataset_version") or "-"),
        ("chat format", export.get("family", "-")),
        ("quantization", f"{data['quant'] or '-'} ({export.get('quant_reason', '-')})"),
        ("file", f"{data['gguf_path'] or 'removed by retention'} ({_size(data['size_bytes'])})"),
        ("sha256", data["gguf_sha256"] or "-"),
        ("verified reply", repr(check.get("reply", "-"))[:120]),
        ("ended its turn", str(check.get("stopped_at_end_of_turn", "-"))),
        ("export timings", ", ".join(f"{k} {v}" for k, v in export.get("timings", {}).items()) or "-"),
        ("ollama tag", data["ollama_tag"] or "-"),
        ("gate", json.dumps(data["gate"]) if data["gate"] else "-"),
    ]
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    _out.print(table)
    for event in events:
        details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("at", "event"))
        _out.print(f"  {escape(event['at'])}  {escape(event['event'])}" + (f"  [dim]{escape(details)}[/dim]" if details else ""))
