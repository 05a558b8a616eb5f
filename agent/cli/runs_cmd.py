"""``ccrl runs list|show``: the training history (the original design's ``training_history.json``).

Every cycle and every training run, with its dataset version, configuration, duration, metrics,
outcome and plots. Runs started by hand (``ccrl train``) appear too, without a cycle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Training history: every cycle and run, with metrics and plots.", no_args_is_help=True)

# Metrics worth a column in the list, in order of preference.
_HEADLINE = ("eval_loss_after", "heldout_reward_after", "train_loss", "train_reward_last", "global_step")


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _seconds(start: Any, end: Any) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def _plots(run: Any) -> list[str]:
    """PNG and JSON curves the trainer wrote beside the run (loss, reward)."""
    found: list[str] = []
    artifacts = (run.metrics or {}).get("artifacts") or {}
    for key, value in artifacts.items():
        if isinstance(value, str) and value.endswith((".png", ".json")) and ("curve" in key or "plot" in key):
            found.append(value)
    if run.output_dir and Path(run.output_dir).is_dir():
        for path in sorted(Path(run.output_dir).glob("*.png")):
            if str(path) not in found:
                found.append(str(path))
    return found


def run_record(run: Any, dataset: Any, versions: list[Any], cycle: Any) -> dict[str, Any]:
    """One training run as JSON."""
    outcome = run.status
    if versions:
        outcome = f"{run.status}; exported as " + ", ".join(f"v{v.number} ({v.status})" for v in versions)
    elif cycle is not None and cycle.outcome:
        outcome = f"{run.status}; cycle {cycle.number}: {cycle.outcome}"
    return {
        "id": run.id,
        "phase": run.phase,
        "status": run.status,
        "cycle": run.cycle,
        "dataset_version": None if dataset is None else {"id": dataset.id, "number": dataset.number,
                                                          "path": dataset.path, "trace_count": dataset.trace_count},
        "parent_run_id": run.parent_run_id,
        "base_model": run.base_model,
        "output_dir": run.output_dir,
        "config": run.config,
        "metrics": {k: v for k, v in (run.metrics or {}).items() if k != "artifacts"},
        "artifacts": (run.metrics or {}).get("artifacts") or {},
        "plots": _plots(run),
        "model_versions": [{"number": v.number, "status": v.status, "gguf_path": v.gguf_path} for v in versions],
        "outcome": outcome,
        "error": run.error,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_s": _seconds(run.started_at, run.finished_at),
    }


def history(limit: int | None = None) -> dict[str, Any]:
    """Every cycle (newest first) and every run, as JSON."""
    from sqlmodel import select

    from ccrl.agent.daemon.cycle import cycle_json
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import Cycle, DatasetVersion, ModelVersion, TrainingRun

    with session_scope() as session:
        cycles = list(session.exec(select(Cycle).order_by(Cycle.number.desc())))  # type: ignore[attr-defined]
        runs = list(session.exec(select(TrainingRun).order_by(TrainingRun.id.desc())))  # type: ignore[union-attr]
        datasets = {d.id: d for d in session.exec(select(DatasetVersion))}
        versions = list(session.exec(select(ModelVersion)))
        by_number = {c.number: c for c in cycles}
        if limit is not None:
            cycles, runs = cycles[:limit], runs[:limit]
        run_rows = []
        for run in runs:
            made = [v for v in versions if run.id in (v.sft_run_id, v.rl_run_id)]
            run_rows.append(run_record(run, datasets.get(run.dataset_version_id), made, by_number.get(run.cycle)))
        cycle_rows = []
        for cycle in cycles:
            row = cycle_json(cycle)
            dataset = datasets.get(cycle.dataset_version_id)
            row["dataset_version_number"] = dataset.number if dataset else None
            row["runs"] = [r.id for r in runs if r.cycle == cycle.number]
            version = next((v for v in versions if v.id == cycle.model_version_id), None)
            row["model_version_number"] = version.number if version else None
            cycle_rows.append(row)
    return {"cycles": cycle_rows, "runs": run_rows}


def _headline(metrics: dict[str, Any]) -> str:
    parts = []
    for key in _HEADLINE:
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts[:3])


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@app.command("list")
def list_runs(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    limit: int = typer.Option(20, "--limit", "-n", help="At most this many cycles and runs."),
) -> None:
    """Every cycle and training run, newest first."""
    data = history(limit)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    console = Console()
    if not data["cycles"] and not data["runs"]:
        console.print("No cycles or training runs yet (`ccrl agent status` says how far the first one is).")
        return
    if data["cycles"]:
        table = Table(title="Cycles")
        for col in ("cycle", "status", "outcome", "new traces", "dataset", "runs", "version", "took"):
            table.add_column(col)
        for c in data["cycles"]:
            table.add_row(str(c["number"]), c["status"], c["outcome"] or (c["step"] or ""),
                          str(c["new_traces"]), f"v{c['dataset_version_number']}" if c["dataset_version_number"] else "",
                          ", ".join(str(r) for r in c["runs"]),
                          f"v{c['model_version_number']}" if c["model_version_number"] else "", _duration(c["duration_s"]))
        console.print(table)
    if data["runs"]:
        table = Table(title="Training runs")
        for col in ("run", "phase", "cycle", "dataset", "status", "took", "metrics"):
            table.add_column(col)
        for r in data["runs"]:
            dataset = r["dataset_version"]
            table.add_row(str(r["id"]), r["phase"], str(r["cycle"] or "-"), f"v{dataset['number']}" if dataset else "",
                          r["status"], _duration(r["duration_s"]), _headline(r["metrics"]))
        console.print(table)


@app.command("show")
def show(
    number: int = typer.Argument(..., help="Training run id (or cycle number with --cycle)."),
    cycle: bool = typer.Option(False, "--cycle", help="Show cycle NUMBER instead of a training run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One training run (or cycle) in full: dataset, config, duration, metrics, outcome, plots."""
    data = history()
    if cycle:
        found = next((c for c in data["cycles"] if c["number"] == number), None)
        found_runs = [r for r in data["runs"] if found and r["id"] in found["runs"]]
    else:
        found = next((r for r in data["runs"] if r["id"] == number), None)
        found_runs = []
    if found is None:
        Console(stderr=True).print(f"[red]error:[/red] no {'cycle' if cycle else 'training run'} {number} "
                                   "(`ccrl runs list` shows them)", highlight=False)
        raise typer.Exit(1)
    if as_json:
        payload = {**found, "training_runs": found_runs} if cycle else found
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    console = Console()
    if cycle:
        console.print(f"Cycle {found['number']}: {found['status']} ({found['outcome'] or found['step']})",
                      style="bold", highlight=False)
        console.print(f"trigger: {found['trigger']}, new traces: {found['new_traces']}, "
                      f"dataset: v{found['dataset_version_number']}, took {_duration(found['duration_s'])}",
                      highlight=False)
        table = Table()
        for col in ("step", "status", "tries", "detail"):
            table.add_column(col, overflow="fold")
        for name, entry in found["steps"].items():
            detail = entry.get("error") or entry.get("reason") or ", ".join(
                f"{k}={v}" for k, v in (entry.get("result") or {}).items() if not isinstance(v, (dict, list)))
            table.add_row(name, entry.get("status", ""), str(entry.get("attempts", 0)), detail)
        console.print(table)
        for run in found_runs:
            console.print(f"run {run['id']} ({run['phase']}): {run['outcome']}; {_headline(run['metrics'])}",
                          highlight=False)
        return
    console.print(f"Run {found['id']} ({found['phase']}): {found['outcome']}", style="bold", highlight=False)
    dataset = found["dataset_version"]
    console.print(f"cycle: {found['cycle'] or '- (started by hand)'}   dataset: "
                  f"{'v' + str(dataset['number']) + ' (' + str(dataset['trace_count']) + ' traces)' if dataset else '-'}"
                  f"   base: {found['base_model']}   took: {_duration(found['duration_s'])}", highlight=False)
    if found["error"]:
        console.print(f"error: {found['error']}", style="red", highlight=False)
    table = Table(title="Metrics")
    table.add_column("metric")
    table.add_column("value", overflow="fold")
    for key, value in found["metrics"].items():
        table.add_row(key, json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value))
    console.print(table)
    console.print("config: " + json.dumps(found["config"], default=str), highlight=False, soft_wrap=True)
    for plot in found["plots"]:
        console.print(f"plot: {plot}", highlight=False)
