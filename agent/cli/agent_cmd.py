"""``ccrl agent run|once|status``: the always-on agent, one cycle by hand, and what it is doing."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The always-on agent: ingest, train at thresholds, export, evaluate, deploy.",
                  no_args_is_help=True)


def _settings() -> Any:
    from ccrl.agent.core.config import get_settings

    try:
        return get_settings()
    except Exception as exc:  # noqa: BLE001 - invalid config: say so, no traceback
        Console(stderr=True).print(f"[red]error:[/red] invalid configuration: {exc}\n"
                                   "Run `ccrl config show` to see what is set where.", highlight=False)
        raise typer.Exit(2) from None


@app.command("run")
def run(
    role: str = typer.Option(
        "all", "--role",
        help="capture: ingest and forward captured events only, never train (a team member's machine); "
             "trainer: thresholds and training cycles on the pooled traces only (the GPU box); all: both.",
    ),
) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C (the systemd unit's ExecStart)."""
    from ccrl.agent.core.logging_setup import configure_logging
    from ccrl.agent.daemon.scheduler import ROLES, Agent

    if role not in ROLES:
        Console(stderr=True).print(f"[red]error:[/red] --role {role!r}: use one of {', '.join(ROLES)}.",
                                   highlight=False)
        raise typer.Exit(2)
    settings = _settings()
    configure_logging(settings.agent.log_level, identifier="ccrl-agent")  # the unit's SyslogIdentifier
    raise typer.Exit(Agent(settings, role=role).run())


@app.command("once")
def once(as_json: bool = typer.Option(False, "--json", help="Print the cycle as JSON.")) -> None:
    """Ingest, then run one full cycle now (or finish the open one), whatever the thresholds say."""
    from ccrl.agent.core.lock import pipeline_lock
    from ccrl.agent.core.logging_setup import configure_logging
    from ccrl.agent.daemon.cycle import cycle_json
    from ccrl.agent.daemon.scheduler import run_once

    settings = _settings()
    configure_logging(settings.agent.log_level)
    err = Console(stderr=True)
    holder = pipeline_lock(settings.home).holder()
    if holder is not None:
        from ccrl.agent.core.lock import busy_message

        err.print(f"[red]error:[/red] {busy_message(holder)}; try again when it is done "
                  "(`ccrl agent status` shows progress).", highlight=False)
        raise typer.Exit(1)
    from ccrl.agent.training.trainer_lock import TrainerLockError, manual_trainer_lock

    try:
        # On a shared store, a cycle by hand must not race the training agent's own cycles.
        with manual_trainer_lock(settings):
            cycle = run_once(settings)
    except TrainerLockError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if cycle is None:
        from ccrl.agent.daemon.agent_status import agent_status

        th = agent_status(settings)["threshold"]
        message = f"No cycle: no new {th['basis']} since the last cycle." if th["new"] == 0 else \
            "No cycle: the pipeline is busy."
        if as_json:
            typer.echo(json.dumps({"cycle": None, "reason": message, "threshold": th}, indent=2))
        else:
            err.print(message, highlight=False)
        raise typer.Exit(1)
    data = cycle_json(cycle)
    if as_json:
        typer.echo(json.dumps({"cycle": data}, indent=2, default=str))
    else:
        _print_cycle(Console(), data)
    if cycle.status != "completed":
        raise typer.Exit(1)


def _print_cycle(console: Console, data: dict[str, Any]) -> None:
    headline = f"Cycle {data['number']}: {data['status']}"
    if data.get("outcome"):
        headline += f" ({data['outcome']})"
    console.print(headline, style="bold", highlight=False)
    table = Table()
    table.add_column("step")
    table.add_column("status")
    table.add_column("tries", justify="right")
    table.add_column("detail", overflow="fold")
    for name, entry in data["steps"].items():
        detail = entry.get("error") or entry.get("reason") or ""
        if entry.get("status") == "done":
            detail = ", ".join(f"{k}={v}" for k, v in (entry.get("result") or {}).items()
                               if not isinstance(v, (dict, list)) and v is not None)
        table.add_row(name, entry.get("status", ""), str(entry.get("attempts", 0)), detail)
    console.print(table)
    if data.get("error"):
        console.print(f"last error: {data['error']}", style="red", highlight=False)
    if data.get("next_attempt_at"):
        console.print(f"next try: {data['next_attempt_at']} UTC (by the agent, or `ccrl agent once`)", highlight=False)


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Is the agent running, what is it doing, how far is the next cycle, what happened last."""
    from ccrl.agent.daemon.agent_status import agent_status

    report = agent_status(_settings())
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    console = Console()
    if report["running"]:
        console.print(f"Agent: [green]running[/green] (pid {report['pid']}, since {report['since']})")
    else:
        console.print("Agent: [yellow]not running[/yellow] (start it with `systemctl --user start ccrl-agent` "
                      "or `ccrl agent run`)")
    console.print(f"Now: {report['status_line']}", highlight=False)
    th = report["threshold"]
    console.print(f"Next cycle: {th['new']}{'+' if th.get('new_at_least') else ''}/{th['required']} {th['basis']}"
                  + (" — due" if th["due"] else f" ({th['remaining']} to go)"), highlight=False)
    if report["current_cycle"]:
        _print_cycle(console, report["current_cycle"])
    if report["recent_cycles"]:
        table = Table(title="Recent cycles")
        for col in ("cycle", "status", "outcome", "new traces", "dataset", "sft run", "rl run", "version"):
            table.add_column(col)
        for c in report["recent_cycles"]:
            table.add_row(str(c["number"]), c["status"], c["outcome"] or "", str(c["new_traces"]),
                          str(c["dataset_version_id"] or ""), str(c["sft_run_id"] or ""),
                          str(c["rl_run_id"] or ""), str(c["model_version_id"] or ""))
        console.print(table)
    deployed = report["deployed_version"]
    console.print(f"Deployed: version {deployed['number']} ({deployed['ollama_tag']})" if deployed
                  else "Deployed: none", highlight=False)
    if report["last_error"]:
        console.print(f"Last error: {report['last_error']}", style="red", highlight=False)
