"""``ccrl service install [--role capture|trainer|all]|uninstall|status``: the agent as a systemd user
service; the role is passed to the unit's ``ccrl agent run --role``."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

from ccrl.agent.daemon import service

app = typer.Typer(help="Run the agent as a systemd user service (ccrl-agent.service).", no_args_is_help=True)


def _err() -> Console:
    return Console(stderr=True)


@app.command("install")
def install(
    role: str = typer.Option(
        service.DEFAULT_ROLE, "--role",
        help="What the agent does (its ExecStart's `ccrl agent run --role`): capture (ingest and forward "
             "only, a member's laptop), trainer (training cycles on the pooled traces, the GPU box), all (both).",
    ),
    memory_high: str = typer.Option(
        None, "--memory-high", metavar="SIZE",
        help="MemoryHigh= of the unit: above it the kernel reclaims the agent's memory hard (e.g. 12G, 75%).",
    ),
    memory_max: str = typer.Option(
        None, "--memory-max", metavar="SIZE",
        help="MemoryMax= of the unit: above it the OOM killer stops the largest process, the training "
             "child (its step fails and is retried; the agent keeps running). E.g. 16G, 90%.",
    ),
    start: bool = typer.Option(True, "--start/--no-start", help="Start (or restart) the agent now."),
    as_json: bool = typer.Option(False, "--json", help="Print what was done as JSON."),
) -> None:
    """Write the unit into ~/.config/systemd/user/ for this installation, reload, enable, start."""
    try:
        service.check_role(role)
    except ValueError as exc:
        _err().print(f"[red]error:[/red] --role: {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        service.check_memory(memory_high, "--memory-high")
        service.check_memory(memory_max, "--memory-max")
    except ValueError as exc:
        _err().print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        exe = service.ccrl_executable()
    except FileNotFoundError as exc:
        _err().print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    argv = service.agent_argv(exe, role)
    environment = service.service_environment()
    files = service.service_files(argv, environment, memory_high=memory_high, memory_max=memory_max)
    env_path = service.env_file_path()
    try:
        # The EnvironmentFile first: a unit that names it must never find it missing.
        env_changed = service.write_private(env_path, files.env_file) if files.env_file is not None else False
        path, changed = service.write_unit(files.unit, service.unit_dir())
    except OSError as exc:
        _err().print(f"[red]error:[/red] cannot write the unit into {service.unit_dir()}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if files.env_file is None and env_path.is_file():
        env_path.unlink()  # no secret to carry any more: leave none behind
        env_changed = True
    changed = changed or env_changed
    report: dict[str, Any] = {"unit": str(path), "changed": changed, "exec_start": " ".join(argv), "role": role,
                              # Names only: the values of secret variables stay in the 0600 file.
                              "environment": {k: (v if k not in service.SECRET_VARIABLES else f"(in {env_path})")
                                              for k, v in environment.items()},
                              "environment_file": str(env_path) if files.env_file is not None else None,
                              "memory_high": memory_high, "memory_max": memory_max,
                              "enabled": False, "started": False}
    ignored = service.shell_only_overrides()
    if ignored:
        report["shell_only_overrides"] = ignored
        _err().print(f"[yellow]note:[/yellow] {', '.join(ignored)} set in this shell will not reach the service; "
                     f"put those settings in the config file (`ccrl config show` says where).", highlight=False)
    systemctl = service.Systemctl()
    reason = systemctl.unavailable_reason()
    if reason is not None:
        report["systemd"] = reason
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        typer.echo(service.NO_SYSTEMD_HELP.format(reason=reason, path=path), err=True)
        raise typer.Exit(1)
    steps = [("daemon-reload",), ("enable", service.UNIT_NAME)]
    if start:
        steps.append(("restart" if changed else "start", service.UNIT_NAME))
    for args in steps:
        done = systemctl.run(*args)
        if done.returncode != 0:
            _err().print(f"[red]error:[/red] systemctl --user {' '.join(args)} failed: "
                         f"{(done.stderr or done.stdout).strip()}", highlight=False)
            raise typer.Exit(1)
    report.update(enabled=True, started=start)
    linger = service.lingering()
    report["linger"] = linger
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = Console()
    console.print(f"{'Wrote' if changed else 'Unchanged'}: {path}", highlight=False)
    console.print(f"Enabled{' and started' if start else ''} {service.UNIT_NAME} (ExecStart: {' '.join(argv)})",
                  highlight=False)
    console.print(f"Follow it with: {service.journal_command()} -f", highlight=False)
    if linger is False:
        console.print("Note: your user manager stops when you log out. To keep the agent running "
                      "(and start it at boot): loginctl enable-linger $USER", highlight=False)


@app.command("uninstall")
def uninstall(as_json: bool = typer.Option(False, "--json", help="Print what was done as JSON.")) -> None:
    """Stop and disable the agent's unit and remove the unit file (captured data stays)."""
    path = service.unit_dir() / service.UNIT_NAME
    report: dict[str, Any] = {"unit": str(path), "removed": False, "disabled": False}
    systemctl = service.Systemctl()
    reason = systemctl.unavailable_reason()
    if reason is None:
        done = systemctl.run("disable", "--now", service.UNIT_NAME)
        report["disabled"] = done.returncode == 0
    else:
        report["systemd"] = reason
    if path.exists():
        path.unlink()
        report["removed"] = True
    env_path = service.env_file_path()
    if env_path.exists():
        env_path.unlink()
        report["environment_file_removed"] = str(env_path)
    if reason is None:
        systemctl.run("daemon-reload")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = Console()
    console.print(f"Removed {path}" if report["removed"] else f"No unit file at {path}", highlight=False)
    if reason is not None:
        console.print(f"(systemctl --user is not reachable here: {reason}; nothing to stop)", highlight=False)
    console.print("Captured data and models stay in place (`ccrl purge` removes data).", highlight=False)


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Is the unit installed, up to date with this installation, enabled and running?"""
    report = service.unit_status()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = Console()
    if not report["installed"]:
        console.print(f"Not installed ({report['unit']}). Install with: ccrl service install", highlight=False)
    else:
        role = report.get("role") or "?"
        reinstall = f"ccrl service install --role {role}" if report.get("role") else "ccrl service install"
        console.print(f"Unit: {report['unit']}" + ("" if report["up_to_date"] else
                      f" [yellow](differs from this installation: run `{reinstall}`)[/yellow]"), highlight=False)
        console.print(f"role: {role}", highlight=False)
    if report.get("systemd"):
        console.print(f"systemd: not reachable ({report['systemd']})", highlight=False)
    else:
        console.print(f"enabled: {report.get('enabled')}  active: {report.get('active')}"
                      f"  pid: {report.get('main_pid') or '-'}", highlight=False)
        if report.get("status_text"):
            console.print(f"status: {report['status_text']}", highlight=False)
    agent = report["agent"]
    console.print(f"agent process: {'running, pid ' + str(agent['pid']) if agent['running'] else 'not running'}",
                  highlight=False)
